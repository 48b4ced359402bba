"""Text-only sources: `{"text": ...}` rows (JSON lines or parquet) become image-free batches
with a plain causal-LM loss, and the Flamingo runs them as its plain LM, whatever its gates."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.loader import get_data
from open_flamingo.data.samples import IGNORE_INDEX
from open_flamingo.data.synthetic import write_synthetic_corpus
from open_flamingo.src.mpt_attention import use_sdpa_for_mpt
from tiny_models import randomize_gates

TEXTS = ["a red circle on the left", "two blue squares", "<image> is spelled here", "   ", "ok"]


def text_corpus(root, dataset_suffix: str) -> str:
    folder = root / f"text-{dataset_suffix}"
    folder.mkdir()
    rows = [{"text": text} for text in TEXTS] + [{"title": "no text field"}]
    if dataset_suffix == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet")
    else:
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        (folder / "part-0.jsonl").write_text(lines)
    return str(folder)


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_text_rows_become_image_free_batches_with_every_token_trained(
    suffix, tmp_path, tokenizer, image_processor
):
    corpus = CorpusConfig(
        dataset_type="text",
        shards=text_corpus(tmp_path, suffix),
        batch_size=3,
        max_tokens=20,
        num_samples=6,
    )
    loader = get_data(corpus, image_processor, tokenizer).dataloader
    batch, _ = list(loader)  # the second batch reads on into the next pass over the file
    assert "images" not in batch
    usable = ["a red circle on the left", "two blue squares", "ok"]
    texts = [
        tokenizer.decode(ids[mask.bool()], skip_special_tokens=False)
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]
    # each text once (the order is the seeded shuffle), cut at 20 tokens, then the eos
    eos = tokenizer.eos_token
    assert sorted(texts) == sorted(
        tokenizer.decode(tokenizer(t + eos, max_length=20, truncation=True)["input_ids"])
        for t in usable
    )
    expected_labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    assert torch.equal(batch["labels"], expected_labels)
    assert not (batch["input_ids"] == tokenizer.convert_tokens_to_ids("<image>")).any()
    # "<image>" in a text would become the media token: counted, as the empty and schema rows;
    # each once per pass, and the first pass was read to its end
    skips = loader.skip_counts()
    for reason in ("media_token_in_text", "empty_text", "schema", "text_truncated"):
        assert skips.get(reason) in (1, 2), skips


def test_synthetic_corpus_writes_text_shards_only_when_asked(tmp_path):
    plain = write_synthetic_corpus(str(tmp_path / "a"), num_docs=2, num_pairs=2, num_eval=0)
    assert "text_shards" not in plain and not (tmp_path / "a" / "text").exists()
    summary = write_synthetic_corpus(
        str(tmp_path / "b"), num_docs=2, num_pairs=2, num_eval=0, num_texts=5, texts_per_shard=2
    )
    assert len(summary["text_shards"]) == 3 and summary["num_texts"] == 5
    lines = Path(summary["text_shards"][0]).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["id"] for row in rows] == ["s0-t000000", "s0-t000001"]
    assert all(row["text"].startswith("Picture ") for row in rows)


@pytest.mark.parametrize("family", ["llama", "mpt"])
@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_a_text_only_batch_gives_the_plain_lm_loss_whatever_the_gates(
    family, gradient_checkpointing, make_flamingo, tiny_lm_dirs
):
    model, _, tokenizer = make_flamingo(family, gradient_checkpointing=gradient_checkpointing)
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs[family])
    use_sdpa_for_mpt(lm)  # as Flamingo runs MPT
    lm.resize_token_embeddings(len(tokenizer))
    batch = tokenizer(["plain web text, no images", "more"], return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, IGNORE_INDEX)
    model.train(), lm.train()  # dropout-free tiny configs: train mode changes nothing else

    def flamingo_loss():
        return model(None, batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss

    plain = lm(batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
    closed = flamingo_loss()
    randomize_gates(model)  # tanh(gate) ~ 0.5-0.9: a block that ran would change the text
    opened = flamingo_loss()
    assert closed.item() == plain.item() and opened.item() == plain.item()
    # and no gradient reaches the perceiver or the blocks from it
    opened.backward()
    vision_side = [p for n, p in model.named_parameters() if "perceiver" in n or "gated_cross" in n]
    assert all(p.grad is None for p in vision_side)


def test_text_with_an_image_token_and_no_images_is_refused(make_flamingo):
    model, _, tokenizer = make_flamingo("llama")
    ids = tokenizer(["a<image>b"], return_tensors="pt").input_ids
    with pytest.raises(ValueError, match="the text holds <image> tokens"):
        model(None, ids)
