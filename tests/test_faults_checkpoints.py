"""Checkpoints a cluster run cannot trust: planted pickles, corrupt or truncated files, NaN
weights, a full disk. Each test repeats a probe of issue 15 against train_omnicorpus.main on the
CPU with the tiny model of tests/test_train.py."""

import errno
import io
import json
import logging
import os
import random
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from test_train import REPO, argv, launch, losses, tiny  # noqa: F401 (the module fixture)

from open_flamingo.train import checkpoint_io
from open_flamingo.train.metrics import read_metrics
from open_flamingo.train.train_omnicorpus import main

SHORT = dict(train_num_samples_interleaved=8, train_num_samples_laion=8)  # 4 steps


class Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def reseal(folder: Path) -> None:
    """What an attacker who can write the folder does too: list the changed files' sizes and
    CRC-32s in the checkpoint's manifest (when it has one)."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != manifest):
        data = path.read_bytes()
        files[path.relative_to(folder).as_posix()] = {"size": len(data), "crc32": zlib.crc32(data)}
    manifest.write_text(json.dumps({"files": files}))


@pytest.fixture(scope="module")
def trained(tiny):  # noqa: F811
    """A finished 4-step run with checkpoint-2 and checkpoint-4, and its losses."""
    run = tiny["root"] / "faults-base"
    main(argv(tiny, run, **SHORT))
    return run, {row["step"]: row["loss"] for row in read_metrics(run / "metrics.jsonl")}


def copy_run(trained, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    (run / ".lock").unlink(missing_ok=True)
    return run


def refusal(tiny, run, **flags) -> str:  # noqa: F811
    """The message main() stops with (SystemExit)."""
    with pytest.raises(SystemExit) as stopped:
        main(argv(tiny, run, **SHORT, **flags))
    return str(stopped.value.code)


# ---------------------------------------------------------------- untrusted files


@pytest.mark.parametrize("name", ["checkpoint.pt", "optimizer.pt", "scheduler.pt", "rng_rank0.pt"])
def test_a_pickle_planted_in_a_checkpoint_file_is_never_run(tiny, trained, tmp_path, name):  # noqa: F811
    run = copy_run(trained, tmp_path)
    marker = tmp_path / "payload-ran"
    torch.save({"state": Payload(marker)}, run / "checkpoint-4" / name)
    reseal(run / "checkpoint-4")
    message = refusal(tiny, run, resume_from_checkpoint=run / "checkpoint-4")
    assert not marker.exists()
    assert str(run / "checkpoint-4" / name) in message
    assert "weights-only load refuses (builtins.exec)" in message


def test_random_bytes_as_load_from_pretrained_are_refused_plainly(tiny, tmp_path):  # noqa: F811
    junk = tmp_path / "junk.pt"
    junk.write_bytes(random.Random(0).randbytes(4096))
    message = refusal(tiny, tmp_path / "run", load_from_pretrained=junk)
    assert f"{junk}: it is not a file that torch.save wrote" in message
    assert "weights_only=False" not in message


# ---------------------------------------------------------------- corrupt files and `latest`


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "checkpoint.pt": truncate,
    "optimizer.pt": lambda path: path.write_bytes(b""),
    "rng_rank0.pt": lambda path: path.write_bytes(os.urandom(path.stat().st_size)),
    "trainer_state.json": lambda path: path.write_text('{"step": 4, "epo'),
    "loaders_rank0.json": lambda path: path.write_text("not json"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corrupt_checkpoint_named_explicitly_is_an_error_naming_the_file(
    tiny,  # noqa: F811
    trained,
    tmp_path,
    name,
):
    run = copy_run(trained, tmp_path)
    CORRUPTIONS[name](run / "checkpoint-4" / name)
    message = refusal(tiny, run, resume_from_checkpoint=run / "checkpoint-4")
    assert str(run / "checkpoint-4" / name) in message
    assert "truncated or changed" in message or "content changed" in message


@pytest.mark.parametrize("resealed", [False, True], ids=["as-found", "manifest-rewritten"])
def test_corrupt_files_are_reported_with_their_problem(tmp_path, resealed):
    """What each kind of damage reads as, also when the manifest was rewritten to match."""
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    checkpoint_io.save_file({"w": torch.ones(64)}, folder / "checkpoint.pt")
    checkpoint_io.write_text(folder / "trainer_state.json", '{"step": 1}')
    checkpoint_io.write_manifest(folder)
    truncate(folder / "checkpoint.pt")
    (folder / "trainer_state.json").write_text('{"step": 1')
    if resealed:
        reseal(folder)
        checks = [
            (lambda: checkpoint_io.load_file(folder / "checkpoint.pt"), "corrupt or truncated"),
            (lambda: checkpoint_io.read_json(folder / "trainer_state.json"), "not valid JSON"),
        ]
    else:
        checks = [(lambda: checkpoint_io.verify_checkpoint(folder), "truncated or changed")]
    for check, problem in checks:
        with pytest.raises(checkpoint_io.CheckpointError, match=problem) as caught:
            check()
        assert str(folder) in str(caught.value)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(checkpoint_io.CheckpointError, match="empty.pt: the file ends early"):
        checkpoint_io.load_file(empty)


def test_latest_falls_back_to_the_newest_checkpoint_that_verifies(
    tiny,  # noqa: F811
    trained,
    tmp_path,
    caplog,
):
    run = copy_run(trained, tmp_path)
    truncate(run / "checkpoint-4" / "optimizer.pt")
    caplog.set_level(logging.WARNING)
    assert main(argv(tiny, run, **SHORT, resume_from_checkpoint="latest")) == 0
    warnings = caplog.text
    assert "skipping checkpoint-4, which cannot be resumed" in warnings
    assert f"{run / 'checkpoint-4' / 'optimizer.pt'}" in warnings
    assert "resuming from checkpoint-2, the newest checkpoint that verifies" in warnings
    resumed = {row["step"]: row["loss"] for row in read_metrics(run / "metrics.jsonl")}
    assert [resumed[s] for s in (3, 4)] == [trained[1][s] for s in (3, 4)]
    assert (run / "latest").read_text() == "checkpoint-4"  # written again, and whole


def test_latest_with_no_checkpoint_that_verifies_names_each_problem(tiny, trained, tmp_path):  # noqa: F811
    run = copy_run(trained, tmp_path)
    truncate(run / "checkpoint-4" / "checkpoint.pt")
    (run / "checkpoint-2" / "scheduler.pt").write_bytes(b"")
    message = refusal(tiny, run, resume_from_checkpoint="latest")
    assert f"no checkpoint of {run} verifies" in message
    assert str(run / "checkpoint-4" / "checkpoint.pt") in message
    assert str(run / "checkpoint-2" / "scheduler.pt") in message


# ---------------------------------------------------------------- non-finite weights


def test_a_checkpoint_or_start_weights_with_nan_are_refused_naming_the_tensor(
    tiny,  # noqa: F811
    trained,
    tmp_path,
):
    run = copy_run(trained, tmp_path)
    weights = torch.load(run / "checkpoint-4" / "checkpoint.pt", weights_only=True)
    weights["perceiver.latents"][0, 0] = float("nan")
    torch.save(weights, run / "checkpoint-4" / "checkpoint.pt")
    reseal(run / "checkpoint-4")
    message = refusal(tiny, run, resume_from_checkpoint=run / "checkpoint-4")
    assert "tensor perceiver.latents holds NaN or infinity" in message
    torch.save(weights, tmp_path / "start.pt")
    message = refusal(tiny, tmp_path / "new", load_from_pretrained=tmp_path / "start.pt")
    assert f"{tmp_path / 'start.pt'}: tensor perceiver.latents holds NaN or infinity" in message


# ---------------------------------------------------------------- writing


def test_a_full_disk_says_so_and_leaves_no_partial_checkpoint(tiny, tmp_path, monkeypatch):  # noqa: F811
    """optimizer.pt of checkpoint-4 is written to /dev/full, which fails as a full disk does."""
    real_open = checkpoint_io._open_for_writing

    def full_disk(path: Path):
        if path.name == "optimizer.pt" and ".checkpoint-4." in str(path):
            return open("/dev/full", "wb")
        return real_open(path)

    monkeypatch.setattr(checkpoint_io, "_open_for_writing", full_disk)
    run = tmp_path / "run"
    message = refusal(tiny, run)
    assert "No space left on device while writing optimizer.pt" in message
    assert f"(folder {run / '.checkpoint-4.incomplete'})" in message
    assert "checkpoint-4 was not saved" in message
    assert not list(run.glob(".checkpoint-*"))
    assert (run / "latest").read_text() == "checkpoint-2"


class NearlyFullDisk(io.FileIO):
    """A file on a disk with `free` bytes left: a write past them stores what fits, then fails
    with ENOSPC, as on a real file system (torch's zip writer then raises "unexpected pos")."""

    def __init__(self, path, free: int):
        super().__init__(path, "wb")
        self.free = free

    def write(self, data) -> int:
        if len(data) > self.free:
            written = super().write(bytes(data[: self.free]))
            self.free -= written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.free -= len(data)
        return super().write(data)


def test_a_disk_that_fills_during_a_write_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_io, "_open_for_writing", lambda path: NearlyFullDisk(path, 5000))
    with pytest.raises(checkpoint_io.CheckpointWriteError) as caught:
        checkpoint_io.save_file({"w": torch.ones(10_000)}, tmp_path / "optimizer.pt")
    message = str(caught.value)
    assert message == f"No space left on device while writing optimizer.pt (folder {tmp_path})"


def test_files_are_fsynced_before_the_rename_that_publishes_them(tiny, tmp_path, monkeypatch):  # noqa: F811
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run = tmp_path / "run"
    main(argv(tiny, run, train_num_samples_interleaved=4, train_num_samples_laion=4))
    published = events.index(("replace", str(run / ".checkpoint-2.incomplete")))
    synced = {path for kind, path in events[:published] if kind == "fsync"}
    incomplete = run / ".checkpoint-2.incomplete"
    files = [p.relative_to(run / "checkpoint-2") for p in (run / "checkpoint-2").rglob("*")]
    assert {str(incomplete / f) for f in files if (run / "checkpoint-2" / f).is_file()} <= synced
    assert str(incomplete) in synced  # the folder's entries
    assert ("fsync", str(run)) in events[published:]  # the rename itself


def test_a_full_disk_on_one_rank_stops_every_rank(tiny, tmp_path):  # noqa: F811
    """Rank 1 cannot write its RNG state: both ranks stop with the reason (none waits forever
    at a barrier) and no partial checkpoint is left."""
    run = tmp_path / "two-ranks"
    script = REPO / "tests" / "faults_full_disk_probe.py"
    process = launch(tiny, run, script=script, script_args=[1, "rng_rank1.pt"], **SHORT)
    assert process.wait(timeout=600) != 0
    log = (run.parent / f"{run.name}.log").read_text()
    assert "checkpoint-2 was not saved: No space left on device while writing rng_rank1.pt" in log
    assert "another process could not write its part" in log  # what rank 0 says
    assert not list(run.glob("*checkpoint-*"))


def test_a_deepspeed_checkpoint_resumes_and_a_planted_shard_is_refused(tiny, tmp_path):  # noqa: F811
    """DeepSpeed unpickles its own files: they are checked weights-only before it reads them,
    with only the DeepSpeed classes they hold allowed. A clean ZeRO-1 checkpoint still resumes
    exactly; one rank's optimizer shard with a payload is refused, naming it."""
    config = "accelerate_config_zero1.yaml"
    run = tmp_path / "zero1"
    flags = dict(SHORT, checkpointing_steps=1)  # 2 steps of 2 processes: checkpoints 1 and 2
    assert launch(tiny, run, deepspeed_config=config, **flags).wait(timeout=900) == 0
    first = losses(run)
    assert (
        launch(
            tiny, run, deepspeed_config=config, **flags, resume_from_checkpoint=run / "checkpoint-1"
        ).wait(timeout=900)
        == 0
    )
    assert losses(run) == first
    shard = (
        run / "checkpoint-1" / "deepspeed" / "state" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    )
    marker = tmp_path / "payload-ran"
    torch.save({"optimizer_state_dict": Payload(marker)}, shard)
    reseal(run / "checkpoint-1")
    refused = launch(
        tiny, run, deepspeed_config=config, **flags, resume_from_checkpoint=run / "checkpoint-1"
    )
    assert refused.wait(timeout=900) != 0
    log = (run.parent / f"{run.name}.log").read_text()
    assert (
        f"{shard}: it holds a Python object that a weights-only load refuses (builtins.exec)" in log
    )
    assert not marker.exists()
