"""A Slurm time limit on the real Slurm of tests/test_slurm.py: the job is warned, saves, is
requeued, resumes from its checkpoint and ends with the losses of an uninterrupted job."""

import json
import re
import subprocess
import time

import pytest
from test_slurm import CONFIGS, FAKE_ACCELERATE, SBATCH, VENV_BIN, sbatch, split_launch
from test_train import tiny  # noqa: F401 (a fixture)

from conftest import REPO
from open_flamingo.train.metrics import read_metrics
from tiny_models import VISION_ENCODER

STEPS = 48  # 48 samples per corpus, batches of 2 on each of 2 processes, 4 epochs


@pytest.fixture(scope="module")
def job_flags(tiny) -> list[str]:  # noqa: F811
    corpus = tiny["root"] / "corpus"  # test_train.py's tiny LLaMA and 48-document corpus
    return [
        f"--vision_encoder_path={VISION_ENCODER}",
        "--vision_encoder_pretrained=none",
        f"--lm_path={tiny['lm']}",
        f"--tokenizer_path={tiny['tokenizer']}",
        f"--omnicorpus_shards={corpus / 'interleaved'}",
        f"--omnicorpus_image_prefix={corpus / 'images'}",
        f"--laion_shards={corpus / 'pairs'}",
        "--precision=fp32",
        "--workers=0",
        "--num_epochs=4",
        "--batch_size_interleaved=2",
        "--batch_size_laion=2",
        "--max_tokens_interleaved=96",
        "--max_tokens_laion=32",
        "--train_num_samples_interleaved=48",
        "--train_num_samples_laion=48",
        "--logging_steps=1",
        "--checkpointing_steps=100",  # checkpoints: the one saved on the signal, and the last
    ]


def job_state(slurm, job_id: int) -> dict[str, str]:
    shown = slurm.command(["scontrol", "show", "job", str(job_id)]).stdout
    return dict(re.findall(r"(JobState|Restarts|ExitCode)=(\S+)", shown))


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "DEADLINE"}


def logged_steps(run) -> list[int]:
    path = run / "metrics.jsonl"
    return (
        [json.loads(line)["step"] for line in path.read_text().splitlines()]
        if path.exists()
        else []
    )


def test_a_job_at_its_time_limit_is_requeued_and_resumes_exactly(slurm, tmp_path, job_flags):
    env = {"ACCELERATE_CONFIG": str(CONFIGS / "accelerate_config_ddp.yaml")}
    status, _, log = sbatch(
        slurm,
        tmp_path / "reference.log",
        [*job_flags, f"--external_save_dir={tmp_path}", "--run_name=reference"],
        env=env,
    )
    assert status == 0, log
    reference = {
        row["step"]: row["loss"] for row in read_metrics(tmp_path / "reference" / "metrics.jsonl")
    }
    assert sorted(reference) == list(range(1, STEPS + 1))

    # A 2-minute limit; Slurm sends the script SIGUSR1 when 119 s are left: at once.
    run, job_log = tmp_path / "limited", tmp_path / "limited.log"
    job_env = {
        **slurm.client_env(),
        "PATH": f"{VENV_BIN}:{slurm.client_env()['PATH']}",
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    # Not `sbatch --wait`: it polls the job now and then and returns at the first state it sees as
    # ended, which during a requeue can be the first attempt's: in CI it returned 1 before the
    # requeued attempt started. The test waits for the job's last attempt itself.
    command = [
        "sbatch",
        "--nodes=2",
        "--gpus-per-node=0",
        f"--cpus-per-task={slurm.cpus_per_node}",
    ]
    command += ["--time=2", "--signal=B:USR1@119", f"--output={job_log}", str(SBATCH)]
    command += [*job_flags, f"--external_save_dir={tmp_path}", "--run_name=limited"]
    submitted = subprocess.run(
        command, cwd=REPO, env=job_env, capture_output=True, text=True, check=True
    )
    job_id = int(re.search(r"Submitted batch job (\d+)", submitted.stdout)[1])
    deadline, released, warned, ended_since = time.monotonic() + 480, False, False, None
    again = False  # the requeued attempt was seen running
    pending_since = None  # when the requeued job was first seen pending
    while True:
        assert time.monotonic() < deadline, job_log.read_text(errors="replace")
        state = job_state(slurm, job_id)
        if state.get("Restarts") == "0" and len(logged_steps(run)) >= STEPS - 8 and not warned:
            # slurmctld checks time limits every 30 s or so; on a fast machine the run could
            # end first. The warning is then sent as Slurm sends it: to the batch shell.
            slurm.command(["scancel", "--signal=USR1", "--batch", str(job_id)])
            warned = True
        requeued = state.get("Restarts") == "1" and state.get("JobState") == "PENDING"
        pending_since = (pending_since or time.monotonic()) if requeued else None
        if requeued and not released and time.monotonic() - pending_since >= 3:
            # Slurm holds a requeued job back for about two minutes; start it now, with room
            # to finish this time. Not at once: the nodes refuse a launch credential issued in
            # the same second as the old attempt's revoked one ("Job credential revoked", and
            # the job fails without running).
            slurm.command(
                ["scontrol", "update", f"JobId={job_id}", "TimeLimit=10", "StartTime=now"]
            )
            released = True
        if state.get("JobState") in ENDED:
            # Ended for good: the requeued attempt, once seen running, or a first attempt still
            # ended 10 s on (it failed, no requeue). While Slurm requeues, the job can show
            # PENDING with Restarts=1 and then the first attempt's end (FAILED, Restarts=1)
            # before the second attempt runs, so only RUNNING marks that attempt.
            ended_since = ended_since or time.monotonic()
            if again or (state.get("Restarts") == "0" and time.monotonic() - ended_since > 10):
                break
        else:
            ended_since = None
        if state.get("Restarts") == "1" and state.get("JobState") == "RUNNING":
            again = True
        time.sleep(0.5)
    text = job_log.read_text(errors="replace")  # ranks interleave in one log
    warning = "the test's scancel" if warned else "Slurm's --signal"
    print(f"--- job {job_id} (warned by {warning}) ended with {state}: ---\n{text}")
    assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), text
    assert released, text

    assert "got SIGUSR1: asking the training processes to save a checkpoint and stop" in text
    stopped = [int(s) for s in re.findall(r"stopping at step (\d+) on SIGUSR1", text)]
    assert stopped and 1 <= stopped[0] < STEPS, text
    assert f"requeueing job {job_id}" in text
    assert f"restart 1 of job {job_id}: resuming from the latest checkpoint" in text
    assert f"resuming from {run / f'checkpoint-{stopped[0]}'}" in text
    assert sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*")) == [
        stopped[0],
        STEPS,
    ]
    resumed = {row["step"]: row["loss"] for row in read_metrics(run / "metrics.jsonl")}
    assert resumed == reference


def test_a_restarted_job_resumes_from_latest_in_place_of_other_starting_points(slurm, tmp_path):
    """A requeued job runs the script again with the same arguments: with SLURM_RESTART_COUNT
    set, it continues from the run's latest checkpoint instead of restarting from a named one or
    from --load_from_pretrained weights (a stand-in `accelerate` records the command)."""
    fake_bin, records = tmp_path / "bin", tmp_path / "records"
    fake_bin.mkdir()
    records.mkdir()
    (fake_bin / "accelerate").write_text(FAKE_ACCELERATE)
    (fake_bin / "accelerate").chmod(0o755)
    training_args = [
        "--run_name", "r",
        "--load_from_pretrained", "start.pt",
        "--resume_from_checkpoint=/runs/r/checkpoint-3",
        "--resume_from_steps", "3",
        "--learning_rate", "1e-4",
    ]  # fmt: skip
    status, _, log = sbatch(
        slurm,
        tmp_path / "job.log",
        training_args,
        env={
            "SLURM_RESTART_COUNT": "1",
            "ACCELERATE_CONFIG": str(CONFIGS / "accelerate_config_ddp.yaml"),
            "FAKE_ACCELERATE_OUT": str(records),
            "PATH": f"{fake_bin}:{slurm.client_env()['PATH']}",
        },
        timeout=60,
    )
    assert status == 0, log
    assert "restart 1 of job" in log
    for node in ("node1", "node2"):
        _, command = split_launch(json.loads((records / node).read_text())["argv"])
        assert command[1:] == [
            "--run_name", "r", "--learning_rate", "1e-4", "--resume_from_checkpoint", "latest",
        ]  # fmt: skip
