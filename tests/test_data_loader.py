"""get_data end to end on the synthetic corpus: sharding, epochs, exact resume, bad input, S3."""

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import threading
import time

import pytest
import torch
from ceph_fixtures import point_s3_at_a_closed_port
from PIL import Image

from conftest import REPO
from open_flamingo.data import storage
from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.doc_types import image_object_name
from open_flamingo.data.formats import get_format
from open_flamingo.data.loader import get_data
from open_flamingo.data.shards import iter_records
from open_flamingo.data.skips import SkipCounter
from open_flamingo.data.stream import Part, SlotStream, StreamConfig, pass_parts, record_order
from open_flamingo.data.synthetic import write_synthetic_corpus
from tiny_models import VISION_ENCODER

MAX_TOKENS = 192


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """80 interleaved docs in 8 shards, 40 pairs in 4 tars."""
    root = tmp_path_factory.mktemp("shapes")
    write_synthetic_corpus(
        str(root),
        num_docs=80,
        num_pairs=40,
        num_eval=0,
        docs_per_shard=10,
        pairs_per_shard=10,
        image_size=64,
        seed=0,
    )
    return root


def interleaved(root, **overrides) -> CorpusConfig:
    """The synthetic corpus's documents: 8 batches of 5 per epoch, 2 workers."""
    fields = dict(
        dataset_type="omnicorpus",
        shards=f"{root}/interleaved",
        image_prefix=f"{root}/images",
        batch_size=5,
        max_tokens=MAX_TOKENS,
        num_samples=40,
        workers=2,
    )
    return CorpusConfig(**{**fields, **overrides})


def pairs(root, **overrides) -> CorpusConfig:
    """The synthetic corpus's pairs: 4 batches of 4 per epoch, 2 workers."""
    fields = dict(
        dataset_type="laion",
        shards=f"{root}/pairs",
        batch_size=4,
        max_tokens=32,
        num_samples=16,
        workers=2,
    )
    return CorpusConfig(**{**fields, **overrides})


def fingerprint(batch) -> str:
    digest = hashlib.sha256()
    for name in ("input_ids", "attention_mask", "labels", "images"):
        digest.update(batch[name].numpy().tobytes())
    return digest.hexdigest()


def run_epochs(loader, epochs, start_epoch=0):
    out = []
    for epoch in range(start_epoch, start_epoch + epochs):
        loader.set_epoch(epoch)
        out += [(epoch, batch["keys"], fingerprint(batch)) for batch in loader]
    return out


def test_batches_have_the_training_shapes_and_labels(corpus, tokenizer, image_processor):
    loader = get_data(interleaved(corpus), image_processor, tokenizer).dataloader
    batches = list(loader)
    assert len(batches) == len(loader) == 8  # 40 samples / batch 5
    batch = batches[0]
    assert batch["images"].shape == (5, 6, 1, 3, 64, 64)
    assert batch["input_ids"].shape == batch["labels"].shape == (5, MAX_TOKENS)
    media_id = tokenizer.convert_tokens_to_ids("<image>")
    assert torch.all(batch["labels"][batch["input_ids"] == media_id] == -100)
    assert torch.all(batch["labels"][batch["attention_mask"] == 0] == -100)
    # images fill the first slots (at least one per <image> token left after truncation), and
    # the zero padding follows them
    used = (batch["input_ids"] == media_id).sum(dim=1)
    filled = batch["images"].abs().sum(dim=(2, 3, 4, 5)).gt(0)  # (B, 6)
    for row, n in enumerate(used.tolist()):
        kept = int(filled[row].sum())
        assert 1 <= n <= kept and filled[row, :kept].all()
    batches = list(get_data(pairs(corpus), image_processor, tokenizer).dataloader)
    assert len(batches) == 4 and batches[0]["images"].shape == (4, 1, 1, 3, 64, 64)


def test_ranks_and_workers_read_disjoint_parts_of_the_corpus(corpus, tokenizer, image_processor):
    keys = []
    for rank in (0, 1):  # 2 ranks x 2 workers = 4 slots, 8 shards of 10 docs: one pass = 80 docs
        config = interleaved(corpus, num_samples=80)
        loader = get_data(config, image_processor, tokenizer, rank=rank, world_size=2).dataloader
        keys += [key for batch in loader for key in batch["keys"]]
    assert len(keys) == 80 and len(set(keys)) == 80


@pytest.mark.parametrize("num_shards, n_slots", [(8, 4), (3, 4), (1, 6), (5, 5), (7, 3)])
def test_every_part_of_a_pass_goes_to_exactly_one_slot(num_shards, n_slots):
    config = StreamConfig(
        format=None,
        shards=[f"s{i}" for i in range(num_shards)],
        image_prefix=None,
        batch_size=1,
        max_tokens=8,
    )
    for pass_index in range(3):
        taken = [
            p for slot in range(n_slots) for p in pass_parts(config, pass_index, slot, n_slots)
        ]
        assert len(taken) == len(set(taken))
        splits = taken[0].stride
        assert {(p.shard, p.offset) for p in taken} == {
            (s, j) for s in config.shards for j in range(splits)
        }
        assert all(pass_parts(config, pass_index, slot, n_slots) for slot in range(n_slots))


def test_epochs_continue_the_stream_with_a_new_shuffle(corpus, tokenizer, image_processor):
    config = interleaved(corpus, num_samples=80, workers=1)
    loader = get_data(config, image_processor, tokenizer).dataloader
    first, second = [[k for _, keys, _ in run_epochs(loader, 1, e) for k in keys] for e in (0, 1)]
    assert sorted(first) == sorted(second)  # one pass each over all 80 docs
    assert first != second  # in another order


def test_resampled_stream_is_deterministic_for_a_seed(corpus, tokenizer, image_processor):
    def keys(seed):
        config = interleaved(corpus, resampled=True, seed=seed)
        return [b["keys"] for b in get_data(config, image_processor, tokenizer).dataloader]

    assert keys(3) == keys(3)
    assert keys(3) != keys(4)


RESUME_SCRIPT = """
import json, torch
import open_clip
from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.loader import get_data
from open_flamingo.src.factory import load_flamingo_tokenizer
from test_data_loader import fingerprint, run_epochs
config = CorpusConfig(**json.load(open({config!r})))
tokenizer = load_flamingo_tokenizer({tokenizer!r})
image_processor = open_clip.create_model_and_transforms({vision!r}, pretrained=None)[2]
loader = get_data(config, image_processor, tokenizer, epoch=1).dataloader
loader.load_state_dict(torch.load({state!r}))
out = run_epochs(loader, 2, start_epoch=1)
json.dump(out, open({out!r}, "w"))
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_a_new_process_continues_exactly(
    workers, corpus, tokenizer, image_processor, byte_tokenizer_dir, tmp_path
):
    config = interleaved(corpus, workers=workers, num_samples=30)  # 6 batches
    uninterrupted = run_epochs(get_data(config, image_processor, tokenizer).dataloader, 3)

    loader = get_data(config, image_processor, tokenizer).dataloader
    seen = run_epochs(loader, 1)
    loader.set_epoch(1)
    for i, batch in enumerate(loader):
        seen.append((1, batch["keys"], fingerprint(batch)))
        if i == 2:  # stop in the middle of epoch 1, after its 3rd batch
            break
    torch.save(loader.state_dict(), tmp_path / "state.pt")
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    script = RESUME_SCRIPT.format(
        config=str(tmp_path / "config.json"),
        tokenizer=str(byte_tokenizer_dir),
        vision=VISION_ENCODER,
        state=str(tmp_path / "state.pt"),
        out=str(tmp_path / "out.json"),
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO / "tests")  # its helpers
    resumed = [tuple(x) for x in json.loads((tmp_path / "out.json").read_text())]
    resumed = [(e, list(k), f) for e, k, f in resumed]
    assert seen + resumed == [(e, list(k), f) for e, k, f in uninterrupted]
    assert len(resumed) == 3 + 6


def test_loader_state_from_another_layout_is_refused(corpus, tokenizer, image_processor):
    loader = get_data(interleaved(corpus, workers=2), image_processor, tokenizer).dataloader
    next(iter(loader))
    other = get_data(interleaved(corpus, workers=1), image_processor, tokenizer).dataloader
    with pytest.raises(ValueError, match="same number of processes, --workers"):
        other.load_state_dict(loader.state_dict())


def test_missing_locations_are_explained(corpus, tokenizer, image_processor):
    with pytest.raises(ValueError, match="--omnicorpus_image_prefix is required"):
        get_data(interleaved(corpus, image_prefix=None), image_processor, tokenizer)
    with pytest.raises(ValueError, match="--obelics_shards is required"):
        get_data(
            interleaved(corpus, dataset_type="obelics", shards=None), image_processor, tokenizer
        )
    with pytest.raises(ValueError, match="Unknown dataset type 'cc3m'"):
        get_data(interleaved(corpus, dataset_type="cc3m"), image_processor, tokenizer)
    with pytest.raises(ValueError, match="No shards found"):
        get_data(interleaved(corpus / "nowhere"), image_processor, tokenizer)


# ---------------------------------------------------------------- bad input, end to end


def _jpeg(color, size=64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _thin_png() -> bytes:
    """A valid 1 x 30000 PNG of a few hundred bytes: resized to 224 px wide it is 6.7 G pixels."""
    buffer = io.BytesIO()
    Image.new("L", (1, 30_000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    """A valid PNG header declaring 40000 x 40000 pixels (1.6 gigapixels)."""
    buffer = io.BytesIO()
    Image.new("1", (40000, 40000)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_bad_corpus(root) -> dict[int, dict[str, int]]:
    """One shard of good and bad documents; returns the skips each line causes when consumed
    (line index -> reason -> count; shard-level problems are listed under -1)."""
    images = root / "images"
    images.mkdir(parents=True)

    def image(name, data):
        url = f"https://bad.invalid/{name}.jpg"
        if data is not None:
            (images / image_object_name(url)).write_bytes(data)
        return url

    def doc(urls, text="a red square"):
        texts, imgs = [], []
        for url in urls:
            imgs += [url, None]
            texts += [None, text]
        return json.dumps({"images": imgs, "texts": texts, "metadata": [None] * len(imgs)})

    good = image("good", _jpeg("red"))
    lines = [
        (doc([good, image("good2", _jpeg("blue"))]), {}),
        ("{not json", None),
        (doc([image("missing", None)]), {"missing_image": 1, "no_images": 1}),
        (doc([image("corrupt", b"\xff\xd8\xff\xe0garbage")]), {"corrupt_image": 1, "no_images": 1}),
        (doc([image("empty", b"")]), {"empty_image": 1, "no_images": 1}),
        (doc([image("bomb", _bomb())]), {"decompression_bomb": 1, "no_images": 1}),
        (doc([image("thin", _thin_png())]), {"extreme_aspect_ratio": 1, "no_images": 1}),
        # valid JSON that json.loads refuses, or holds text that is not Unicode: shard-level
        ("[" * 5000 + "]" * 5000, None),
        (doc([good]).replace("a red square", "cut emoji \\ud83d"), None),
        (json.dumps({"images": [good], "texts": ["both set"]}), {"schema": 1}),
        (json.dumps([1, 2, 3]), None),  # not an object: a shard-level schema problem
        (doc([image(f"many{i}", _jpeg("green")) for i in range(8)]), {"images_over_limit": 2}),
        (doc([good], text="long " * 400), {"text_truncated": 1}),
    ]
    data = "".join(line + "\n" for line, _ in lines).encode()
    data += b'{"texts": ["\xff\xfe"]}\n'  # not UTF-8
    data += b'{"truncated": '
    (root / "docs").mkdir()
    (root / "docs" / "bad.jsonl").write_bytes(data)
    effects = {i: reasons for i, (_, reasons) in enumerate(lines) if reasons is not None}
    effects[-1] = {"invalid_json": 2, "schema": 1, "non_utf8": 2, "truncated_shard": 1}
    return effects


def test_bad_input_is_skipped_and_counted_end_to_end(tmp_path, tokenizer, image_processor):
    """Every kind of bad input is skipped and counted once, when the stream passes it."""
    effects = write_bad_corpus(tmp_path)
    config = interleaved(
        tmp_path,
        shards=str(tmp_path / "docs"),
        image_prefix=str(tmp_path / "images"),
        batch_size=3,
        num_samples=3,
        workers=0,
    )
    loader = get_data(config, image_processor, tokenizer).dataloader
    (batch,) = list(loader)
    assert len(batch["keys"]) == 3  # the three usable documents of the shard
    # which records the stream consumed: the first `record` of this pass's seeded order
    state = loader.states[0]
    shard = str(tmp_path / "docs" / "bad.jsonl")
    readable = [
        i
        for i, _ in iter_records(
            shard, (tmp_path / "docs" / "bad.jsonl").read_bytes(), SkipCounter()
        )
    ]
    order = record_order(0, 0, Part(0, shard, 1, 0), len(readable))
    consumed = [readable[i] for i in order[: state["record"]]] + [-1]
    expected = {}
    for line in consumed:
        for reason, n in effects[line].items():
            expected[reason] = expected.get(reason, 0) + n
    assert state["passes"] == 0 and loader.skip_counts() == expected
    every_reason = {r for reasons in effects.values() for r in reasons}
    assert every_reason - {"no_images"} <= set(expected) | {
        r for line in set(effects) - set(consumed) for r in effects[line]
    }


def test_every_kind_of_bad_input_is_met_in_a_full_pass(tmp_path, tokenizer, image_processor):
    effects = write_bad_corpus(tmp_path)
    config = interleaved(
        tmp_path,
        shards=str(tmp_path / "docs"),
        image_prefix=str(tmp_path / "images"),
        batch_size=1,
        num_samples=7,
        workers=0,
    )
    loader = get_data(config, image_processor, tokenizer).dataloader
    for _ in loader:  # 7 samples: more than the 3 usable documents of one pass
        pass
    assert loader.states[0]["passes"] >= 2
    every_reason = {r for reasons in effects.values() for r in reasons}
    assert set(loader.skip_counts()) == every_reason


def test_slot_without_records_shows_why_its_shards_gave_none(tmp_path, tokenizer, image_processor):
    config = interleaved(tmp_path, shards=f"{tmp_path}/{{a,b}}.jsonl", workers=0)
    loader = get_data(config, image_processor, tokenizer).dataloader
    with pytest.raises(RuntimeError, match=r"no record in 101 passes.*'shard_unreadable': 202"):
        next(iter(loader))


def stream_of(tokenizer, image_processor, shards, image_prefix) -> SlotStream:
    config = StreamConfig(
        format=get_format("omnicorpus"),
        shards=shards,
        image_prefix=image_prefix,
        batch_size=1,
        max_tokens=MAX_TOKENS,
        retry_deadline_s=0.5,
    )
    return SlotStream(config, tokenizer, image_processor, slot=0, n_slots=1)


@pytest.mark.parametrize("on_s3", ["shards", "images"])
def test_unreachable_storage_stops_the_loader_with_a_clear_error(
    on_s3, corpus, tokenizer, image_processor, monkeypatch
):
    """Before, every read waited out the deadline and was skipped: hours of retries (shards,
    pass after pass) or 10,000 documents without images before the loader gave up."""
    point_s3_at_a_closed_port(monkeypatch)
    shards = ["s3://down/a.jsonl", "s3://down/b.jsonl"] if on_s3 == "shards" else None
    stream = stream_of(
        tokenizer,
        image_processor,
        shards or storage_paths(corpus / "interleaved"),
        "s3://down/images" if on_s3 == "images" else str(corpus / "images"),
    )
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"stops: cannot read s3://down/.*answers no request"):
        stream.next_batch()
    assert time.monotonic() - start < 10
    stream.close()


def test_image_that_keeps_failing_is_counted_while_the_storage_answers(
    corpus, tokenizer, image_processor, monkeypatch
):
    failing = set()
    real_read = storage.read_bytes

    def read_bytes(uri):
        if "/images/" in str(uri) and not failing:
            failing.add(str(uri))  # the first image read fails for good, transiently
        if str(uri) in failing:
            raise storage.StorageError(f"cannot read {uri}: 503", transient=True)
        return real_read(uri)

    monkeypatch.setattr(storage, "read_bytes", read_bytes)
    stream = stream_of(
        tokenizer, image_processor, storage_paths(corpus / "interleaved"), str(corpus / "images")
    )
    for _ in range(3):
        stream.next_batch()
    stream.close()
    assert stream.skips.as_dict()["image_unavailable"] == 1


def storage_paths(folder) -> list[str]:
    return sorted(str(path) for path in folder.iterdir())


# ---------------------------------------------------------------- S3 (a real Ceph RGW)


def upload(root, bucket) -> str:
    for path in root.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{bucket}/shapes/{path.relative_to(root)}", path.read_bytes())
    return f"{bucket}/shapes"


def relative(run, root):
    return [(e, [k.removeprefix(str(root)) for k in keys], f) for e, keys, f in run]


def test_s3_corpus_gives_the_same_batches_as_local(corpus, tokenizer, image_processor, s3_bucket):
    remote = upload(corpus, s3_bucket)
    for describe in (interleaved, pairs):
        local = get_data(describe(corpus), image_processor, tokenizer)
        from_s3 = get_data(describe(remote), image_processor, tokenizer)
        expected = relative(run_epochs(local.dataloader, 1), corpus)
        assert relative(run_epochs(from_s3.dataloader, 1), remote) == expected


def test_gateway_outage_mid_epoch_changes_nothing(
    corpus, tokenizer, image_processor, s3_bucket, rgw
):
    remote = upload(corpus, s3_bucket)
    config = interleaved(remote, workers=1, num_samples=40)
    expected = run_epochs(get_data(config, image_processor, tokenizer).dataloader, 1)
    loader = get_data(config, image_processor, tokenizer).dataloader
    got = []
    restarter = None
    for i, batch in enumerate(loader):
        got.append((0, batch["keys"], fingerprint(batch)))
        if i == 1:
            rgw.stop_gateway()
            restarter = threading.Timer(4.0, rgw.start_gateway)
            restarter.start()
            outage_started = time.monotonic()
    restarter.join()
    assert time.monotonic() - outage_started >= 4.0
    assert got == expected
    assert not {"image_unavailable", "missing_image", "shard_unreadable"} & set(
        loader.skip_counts()
    )
