"""MMC4's image order: this project keeps each matched image right before its sentence, with the
image tensors in that same order, so the k-th `<image>` token gets the k-th image. Upstream
(open-flamingo 2.0.1, run here from .cache/upstream-site) stacks the image tensors in
`image_info` order while its `<image>` tokens follow sentence order, so wherever the two orders
differ it pairs images with the wrong tokens. Both run on the same documents; the texts are
identical, and only upstream's image slots disagree with its tokens."""

import base64
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from published_corpora import noise_png, tar_of
from test_data_published import pixels

from conftest import REPO, require
from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.loader import get_data

UPSTREAM_SITE = REPO / ".cache" / "upstream-site"
UPSTREAM_TRAIN = UPSTREAM_SITE / "open_flamingo" / "train"
NUM_DOCS = 20

# Runs upstream's own MMC4 preprocessing on each document and prints, per document, the text and
# which image_info entry fills each image slot (its horizontal flip, random, is undone). It runs in
# UPSTREAM_TRAIN, whose modules import each other as top-level modules.
UPSTREAM_SCRIPT = """
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import PreTrainedTokenizerFast
import data as upstream

class Tokenizer:  # the attributes upstream reads, over the same tokenizer
    def __init__(self, path, eos, pad):
        self.hf = PreTrainedTokenizerFast(tokenizer_file=path, eos_token=eos, pad_token=pad)
        self.eos_token, self.padding_side = self.hf.eos_token, "right"
        self.additional_special_tokens = ["<|endofchunk|>", "<image>"]
        self.additional_special_tokens_ids = self.hf.convert_tokens_to_ids(self.additional_special_tokens)
    def __call__(self, *args, **kwargs):
        self.hf.padding_side = self.padding_side
        return self.hf(*args, **kwargs)

def process(image):
    return torch.from_numpy(np.asarray(image.resize((16, 16)), dtype=np.float32)).permute(2, 0, 1)

tokenizer = Tokenizer(sys.argv[1], sys.argv[3], sys.argv[4])
docs = [json.loads(line) for line in open(sys.argv[2])]
out = []
for doc in docs:
    torch.manual_seed(0)
    images, (ids, mask) = upstream.preprocess_interleaved(
        (json.dumps(doc),), tokenizer, process, 0.24, 1, 6, max_tokens=512)
    import base64, io
    candidates = [process(Image.open(io.BytesIO(base64.b64decode(i["image_base64"]))).convert("RGB"))
                  for i in doc["image_info"]]
    slots = []
    for slot in images:
        if not slot.any():
            break
        slots.append(next(k for k, c in enumerate(candidates)
                          if torch.equal(slot, c) or torch.equal(slot, c.flip(-1))))
    text = tokenizer.hf.decode(ids[0][: int(mask[0].sum())].tolist())
    out.append({"slots": slots, "text": text})
print(json.dumps(out))
"""


def make_docs() -> list[dict]:
    """MMC4 documents whose images' best sentences are a random permutation (one-to-one, over
    the threshold, so upstream's argmax and the Hungarian matching agree), with the images'
    `image_info` order independent of their sentences' order. Sentence s names its image."""
    rng = np.random.default_rng(0)
    docs = []
    for d in range(NUM_DOCS):
        num_images = int(rng.integers(2, 5))
        num_sentences = num_images + int(rng.integers(0, 3))
        sentence_of = rng.permutation(num_sentences)[:num_images]
        similarity = rng.uniform(0.0, 0.2, (num_images, num_sentences))
        similarity[np.arange(num_images), sentence_of] = rng.uniform(0.5, 0.9, num_images)
        owner = {int(s): i for i, s in enumerate(sentence_of)}
        sentences = [
            f"Sentence {s} shows image {owner[s]}." if s in owner else f"Sentence {s}."
            for s in range(num_sentences)
        ]
        infos = [
            {
                "image_name": f"{d}-{i}.png",
                "raw_url": f"https://example.org/{d}/{i}.png",
                "image_base64": base64.b64encode(noise_png(10_000 + 10 * d + i)).decode(),
            }
            for i in range(num_images)
        ]
        docs.append(
            {
                "url": f"https://example.org/{d}",
                "text_list": sentences,
                "image_info": infos,
                "similarity_matrix": similarity.round(3).tolist(),
            }
        )
    return docs


def token_order(doc: dict) -> list[int]:
    """The images in the order of the `<image>` tokens: by the sentence each one precedes."""
    similarity = np.asarray(doc["similarity_matrix"])
    return [int(i) for i in np.argsort(similarity.argmax(axis=1))]


@pytest.fixture(scope="module")
def upstream_run(tmp_path_factory, tokenizer):
    require(
        (UPSTREAM_SITE / "open_flamingo").is_dir(), "upstream site missing: run `make upstream`"
    )
    root = tmp_path_factory.mktemp("mmc4_order")
    docs = make_docs()
    (root / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    tokenizer.save_pretrained(root / "tokenizer")
    members = [(f"{d:05d}.json", json.dumps(doc).encode()) for d, doc in enumerate(docs)]
    (root / "wds").mkdir()
    (root / "wds" / "shard-0.tar").write_bytes(tar_of(members))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            UPSTREAM_SCRIPT,
            str(root / "tokenizer" / "tokenizer.json"),
            str(root / "docs.jsonl"),
            tokenizer.eos_token,
            tokenizer.pad_token,
        ],
        capture_output=True,
        text=True,
        cwd=UPSTREAM_TRAIN,
        env={"PYTHONPATH": str(UPSTREAM_SITE), "PATH": "/usr/bin:/bin", "HOME": str(root)},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root, docs, json.loads(result.stdout.strip().splitlines()[-1])


def test_upstream_pairs_images_with_the_wrong_tokens_and_this_project_does_not(
    upstream_run, tokenizer, image_processor
):
    root, docs, upstream = upstream_run
    config = CorpusConfig(
        dataset_type="mmc4_wds",
        shards=str(root / "wds"),
        batch_size=1,
        max_tokens=512,
        num_samples=NUM_DOCS,
    )
    loader = get_data(config, image_processor, tokenizer).dataloader
    ours = {}
    for batch in loader:
        doc = docs[int(batch["keys"][0].rpartition("#")[2])]
        candidates = [
            pixels(base64.b64decode(info["image_base64"]), image_processor)
            for info in doc["image_info"]
        ]
        slots = [s for s in batch["images"][0, :, 0] if s.any()]
        length = int(batch["attention_mask"][0].sum())
        text = tokenizer.decode(batch["input_ids"][0, :length].tolist())
        found = [next(k for k, c in enumerate(candidates) if torch.equal(s, c)) for s in slots]
        ours[int(batch["keys"][0].rpartition("#")[2])] = (found, text)
    assert sorted(ours) == list(range(NUM_DOCS))

    mispaired = 0
    for d, doc in enumerate(docs):
        expected = token_order(doc)
        found, text = ours[d]
        assert text == upstream[d]["text"]  # the same tokens on both sides
        for k, piece in enumerate(text.split("<image>")[1:]):
            assert (
                piece.startswith("Sentence")
                and f"shows image {expected[k]}." in piece.split("<|endofchunk|>")[0]
            )
        assert found == expected  # here the k-th <image> gets the image its sentence is about
        assert upstream[d]["slots"] == sorted(expected)  # upstream: image_info order
        mispaired += upstream[d]["slots"] != expected
    assert mispaired == 17  # of the 20 documents, the two orders differ in 17
