"""Runs on a shared cluster: two runs on one folder, a stale lock, a new run over old
checkpoints, a change of world size, NaN losses and weights, and a stop signal. Each test repeats
a probe of issue 15 against train_omnicorpus on the CPU with the tiny model of test_train.py."""

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from test_train import REPO, argv, finish, launch, losses, tiny  # noqa: F401 (a fixture)

from open_flamingo.train import run_folder
from open_flamingo.train import step as step_module
from open_flamingo.train.checkpointing import checkpoint_steps
from open_flamingo.train.preemption import REQUEUE_EXIT_CODE, REQUEUE_FILE_ENV, StopRequest
from open_flamingo.train.step import TrainStep
from open_flamingo.train.train_omnicorpus import main

SHORT = dict(train_num_samples_interleaved=8, train_num_samples_laion=8)  # 4 steps, 1 process
LONG = dict(train_num_samples_interleaved=24, train_num_samples_laion=24)  # 12 steps


def refusal(tiny, run, **flags) -> str:  # noqa: F811
    """The message main() stops with (SystemExit)."""
    with pytest.raises(SystemExit) as stopped:
        main(argv(tiny, run, **flags))
    return str(stopped.value.code)


def start_trainer(tiny, run, env=None, **flags) -> subprocess.Popen:  # noqa: F811
    """train_omnicorpus.main(flags) in a process of its own (no launcher: its pid trains)."""
    code = f"import sys; from open_flamingo.train.train_omnicorpus import main; sys.exit(main({argv(tiny, run, **flags)!r}))"
    log = open(run.parent / f"{run.name}.log", "ab")  # noqa: SIM115 (the child keeps its copy)
    with log:
        return subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_for_step(process, run, step: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while step not in (losses(run) if (run / "metrics.jsonl").exists() else {}):
        assert process.poll() is None, (run.parent / f"{run.name}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run did not reach its step in time"
        time.sleep(0.2)


# ---------------------------------------------------------------- one run per folder


def test_one_run_per_folder_a_stale_lock_and_no_new_run_over_checkpoints(
    tiny,  # noqa: F811
    tmp_path,
    caplog,
):
    run = tmp_path / "shared"
    first = start_trainer(tiny, run, **LONG)
    try:
        wait_for_step(first, run, 1)
        message = refusal(tiny, run, **LONG, resume_from_checkpoint="latest")
        assert f"pid {first.pid} on host {socket.gethostname()}" in message
        assert "is in use by another run" in message
    finally:
        first.kill()  # dies holding the lock: a stale lock file remains
        first.wait()
    caplog.set_level(logging.WARNING)
    assert main(argv(tiny, run, **LONG, resume_from_checkpoint="latest")) == 0
    assert f"taking over the lock of {run} from pid {first.pid}" in caplog.text
    before = mtimes(run)
    message = refusal(tiny, run, **LONG)  # a new run, not a resume
    assert "already holds checkpoints" in message and "--resume_from_checkpoint latest" in message
    assert mtimes(run) == before  # no checkpoint, `latest` or metrics row touched


def mtimes(run) -> dict:
    return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}


# ---------------------------------------------------------------- world size


def test_a_resume_with_another_world_size_is_refused_saying_what_changed(tiny, tmp_path):  # noqa: F811
    """2 processes x 1 worker saved it; 1 process x 2 workers has as many loader slots, but
    would read rank 1's samples again."""
    run = tmp_path / "two-processes"
    finish(launch(tiny, run, **SHORT, workers=1), run)  # 2 steps of 2 processes
    assert checkpoint_steps(run) == [2]
    # Half the samples keep 2 batches per epoch, so the loader's own check passes, as in the
    # issue's probe.
    half = dict(train_num_samples_interleaved=4, train_num_samples_laion=4)
    message = refusal(tiny, run, **half, workers=2, num_epochs=2, resume_from_checkpoint="latest")
    assert "cannot continue exactly" in message
    assert "num_processes 2 -> 1" in message and "workers 1 -> 2" in message
    assert "train_num_samples_interleaved 8 -> 4" in message


# ---------------------------------------------------------------- non-finite


def test_nan_losses_stop_the_run_with_warnings_and_finite_checkpoints(tiny, tmp_path, caplog):  # noqa: F811
    """The issue's probe: at --learning_rate 1e6 the loss turns NaN after a few steps."""
    run = tmp_path / "nan"
    caplog.set_level(logging.WARNING)
    message = refusal(tiny, run, **LONG, learning_rate=1e6, max_nonfinite_steps=3)
    assert "3 micro-steps in a row had a non-finite loss or gradient" in message
    skipped = [r for r in caplog.records if "non-finite loss or gradient" in r.getMessage()]
    assert len(skipped) == 3
    assert checkpoint_steps(run)  # checkpoints before the NaNs, all finite
    for step in checkpoint_steps(run):
        weights = torch.load(run / f"checkpoint-{step}" / "checkpoint.pt", weights_only=True)
        assert all(torch.isfinite(w).all() for w in weights.values())


def test_non_finite_weights_are_never_saved(tiny, tmp_path, monkeypatch):  # noqa: F811
    real_call = TrainStep.__call__
    calls = []

    def step_then_spoil(self, *batches):
        result = real_call(self, *batches)
        calls.append(1)
        if len(calls) == 2:  # just before checkpoint-2 is written
            weights = self.accelerator.unwrap_model(self.model).perceiver.latents
            with torch.no_grad():
                weights[0, 0] = float("inf")
        return result

    monkeypatch.setattr(TrainStep, "__call__", step_then_spoil)
    run = tmp_path / "inf"
    message = refusal(tiny, run, **SHORT)
    assert "weight perceiver.latents holds NaN or infinity" in message
    assert "checkpoint-2 was not written" in message
    assert not list(run.glob("*checkpoint-2*"))


def test_counting_flops_leaves_the_step_bit_identical():
    """The trainer counts FLOPs on each process's first step. torch's FlopCounterMode ran
    silu_backward through its decomposition there, whose gradients differ in the last bits: a
    resumed run's first step differed from the uninterrupted run's (SmolLM2's drift)."""
    x = torch.randn(4, 48, 1536, generator=torch.Generator().manual_seed(0), requires_grad=True)
    w = torch.randn(1536, 576, generator=torch.Generator().manual_seed(1), requires_grad=True)

    def grads(counter):
        x.grad = w.grad = None
        with counter:
            (torch.nn.functional.silu(x) @ w).square().sum().backward()
        return x.grad.clone(), w.grad.clone()

    plain = grads(contextlib.nullcontext())
    counter = step_module.StepFlops()
    counted = grads(counter)
    assert all(torch.equal(a, b) for a, b in zip(plain, counted, strict=True))
    assert counter.flops == 3 * 2 * 4 * 48 * 1536 * 576  # the matmul, forward and backward


# ---------------------------------------------------------------- a stop signal


def test_a_stop_signal_saves_exits_for_requeue_and_resumes_exactly(tiny, tmp_path):  # noqa: F811
    reference = tmp_path / "uninterrupted"
    main(argv(tiny, reference, **LONG, checkpointing_steps=100))
    run, marker = tmp_path / "stopped", tmp_path / "requeue"
    process = start_trainer(
        tiny, run, env={REQUEUE_FILE_ENV: str(marker)}, **LONG, checkpointing_steps=100
    )
    wait_for_step(process, run, 2)
    process.send_signal(signal.SIGUSR1)
    assert process.wait(timeout=600) == REQUEUE_EXIT_CODE
    steps = checkpoint_steps(run)
    assert len(steps) == 1 and 2 <= steps[0] < 12  # saved where it stopped
    assert marker.read_text().strip() == str(run / f"checkpoint-{steps[0]}")
    assert (
        main(argv(tiny, run, **LONG, checkpointing_steps=100, resume_from_checkpoint="latest")) == 0
    )
    assert losses(run) == losses(reference)


def test_sigterm_and_sigusr1_only_set_the_stop_flag_while_training():
    previous = signal.getsignal(signal.SIGTERM)
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        with StopRequest() as stop:
            os.kill(os.getpid(), signum)
            assert stop.requested and stop.signal_name == signal.Signals(signum).name
    assert signal.getsignal(signal.SIGTERM) is previous


def test_the_lock_of_a_killed_trainer_is_free_while_its_forked_workers_live(tmp_path):
    """DataLoader workers are forked from the trainer and inherit the lock file: when the
    trainer is SIGKILLed they linger for seconds. The lock belongs to the trainer alone, so a
    resume right after the kill (scripts/gpu_training_runs.py does one) is not refused."""
    run = tmp_path / "run"
    run.mkdir()
    code = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from open_flamingo.train.run_folder import RunLock\n"
        f"lock = RunLock(Path({str(run)!r}))\n"
        "lock.acquire()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    time.sleep(120)\n"
        "    os._exit(0)\n"
        "print(child, flush=True)\n"
        "time.sleep(120)\n"
    )
    trainer = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    worker = int(trainer.stdout.readline())
    try:
        trainer.kill()
        trainer.wait()
        os.kill(worker, 0)  # the forked worker still lives, holding the inherited file
        lock = run_folder.RunLock(run)
        lock.acquire()
        lock.release()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
