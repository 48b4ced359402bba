"""scripts/slurm/train_omnicorpus.sbatch on a real Slurm: a controller and two simulated nodes on
this machine (tests/support/slurm_cluster.py), submitted to with `sbatch --wait` as a user would."""

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from open_flamingo.data.synthetic import write_synthetic_corpus
from open_flamingo.tools.byte_tokenizer import save_byte_tokenizer
from support.slurm_cluster import SlurmCluster
from tiny_models import VISION_ENCODER, save_tiny_lm

SBATCH = REPO / "scripts" / "slurm" / "train_omnicorpus.sbatch"
TRAIN_SCRIPT = REPO / "open_flamingo" / "train" / "train_omnicorpus.py"
CONFIGS = REPO / "accelerate_configs"
VENV_BIN = Path(sys.executable).parent
# The variables the sbatch script reads; a test sets the ones it means.
SCRIPT_VARIABLES = ("ACCELERATE_CONFIG", "PROCESSES_PER_NODE", "MAIN_PROCESS_PORT")
LAUNCHER_LINE = re.compile(r"^\[(node\d+)\] accelerate launch --machine_rank (\d+)$", re.M)


def sbatch(slurm, log: Path, args: list[str], env: dict | None = None, timeout: float = 300):
    """`sbatch --wait` the script from the repository root, on both nodes, without GPUs and with
    the nodes' CPUs. Returns (exit status, job id, job log)."""
    job_env = {k: v for k, v in slurm.client_env().items() if k not in SCRIPT_VARIABLES}
    job_env["PATH"] = f"{VENV_BIN}{os.pathsep}{job_env['PATH']}"  # the venv's accelerate
    job_env["HF_HUB_OFFLINE"] = "1"
    job_env.update(env or {})
    command = ["sbatch", "--wait", "--nodes=2", "--gpus-per-node=0"]
    command += [f"--cpus-per-task={slurm.cpus_per_node}", f"--output={log}", str(SBATCH), *args]
    result = subprocess.run(
        command, cwd=REPO, env=job_env, capture_output=True, text=True, timeout=timeout
    )
    submitted = re.search(r"Submitted batch job (\d+)", result.stdout)
    assert submitted, f"sbatch did not submit:\n{result.stdout}{result.stderr}"
    # several ranks write to the one log: a character may be cut by another rank's line
    text = log.read_text(errors="replace") if log.exists() else "(no job log)"
    print(f"--- job {submitted[1]} exited with {result.returncode}; its log: ---\n{text}")
    return result.returncode, int(submitted[1]), text


# --- the cluster itself ------------------------------------------------------------------------


def test_cluster_runs_a_task_on_each_node_at_once(slurm):
    nodes = slurm.command(["sinfo", "-h", "-N", "-o", "%N %t %c"]).stdout.split("\n")
    assert sorted(filter(None, nodes)) == [
        f"node1 idle {slurm.cpus_per_node}",
        f"node2 idle {slurm.cpus_per_node}",
    ]
    for node in ("node1", "node2"):
        assert "NodeAddr=127.0.0.1 " in slurm.command(["scontrol", "show", "node", node]).stdout
    # One step, one task per node, each claiming all of its node's CPUs: both run together.
    step = slurm.command(
        ["srun", "--nodes=2", "--ntasks=2", f"--cpus-per-task={slurm.cpus_per_node}"]
        + ["bash", "-c", 'echo "$SLURMD_NODENAME $SLURM_NODEID"']
    )
    assert sorted(step.stdout.split("\n")[:2]) == ["node1 0", "node2 1"]


def test_cli_stop_ends_daemons_and_running_jobs(slurm_installed, tmp_path):
    cluster = SlurmCluster(tmp_path / "cluster")
    cli = [sys.executable, "-m", "tests.support.slurm_cluster"]  # from the repository root
    started = subprocess.run(
        [*cli, "start", "--dir", str(cluster.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        assert f"export SLURM_CONF={cluster.conf}" in started.stdout
        pid_file = tmp_path / "job.pid"
        cluster.command(
            ["sbatch", "--nodes=1", "--output=/dev/null", f"--wrap=echo $$ > {pid_file}; sleep 300"]
        )
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.1)
        job_pid = int(pid_file.read_text())
        running = cluster.processes()
        # munged, slurmctld (+ slurmscriptd), two slurmds, the job's slurmstepd, its script
        assert job_pid in running and len(running) >= 6
    finally:
        stopped = subprocess.run(
            [*cli, "stop", "--dir", str(cluster.root)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert cluster.processes() == []


# --- what the script launches (a stand-in `accelerate` records it) ----------------------------

FAKE_ACCELERATE = f"""#!{sys.executable}
import json, os, sys
record = {{
    "argv": sys.argv[1:],
    "node_id": os.environ["SLURM_NODEID"],
    "use_cpu": os.environ.get("ACCELERATE_USE_CPU"),
}}
with open(os.path.join(os.environ["FAKE_ACCELERATE_OUT"], os.environ["SLURMD_NODENAME"]), "w") as f:
    json.dump(record, f)
"""


def split_launch(argv: list[str]) -> tuple[dict, list[str]]:
    """`launch --flag value ... script args...` -> ({flag: value}, [script, args...])."""
    assert argv[0] == "launch"
    flags, rest = {}, argv[1:]
    while rest and rest[0].startswith("--"):
        flags[rest[0]] = rest[1]
        rest = rest[2:]
    return flags, rest


@pytest.mark.parametrize(
    "config, env, processes_per_node, use_cpu",
    [
        # DDP on CPUs: one process per node by default, over gloo.
        ("accelerate_config_ddp.yaml", {}, 1, "1"),
        # DeepSpeed runs on CPUs by itself: ACCELERATE_USE_CPU would turn it into plain DDP.
        (
            "accelerate_config_zero1_slurm.yaml",
            {"PROCESSES_PER_NODE": "3", "MAIN_PROCESS_PORT": "23456"},
            3,
            None,
        ),
    ],
    ids=["ddp", "zero1_slurm"],
)
def test_one_launcher_per_node_with_its_machine_rank(
    slurm, tmp_path, config, env, processes_per_node, use_cpu
):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "accelerate").write_text(FAKE_ACCELERATE)
    (fake_bin / "accelerate").chmod(0o755)
    records = tmp_path / "records"
    records.mkdir()
    # Passed through verbatim: spaces, quotes and glob characters included.
    training_args = ["--run_name", "two words", "--omnicorpus_shards", "s3://b/{0..3}.tar *'\""]
    status, job_id, log = sbatch(
        slurm,
        tmp_path / "job.log",
        training_args,
        env={
            **env,
            "ACCELERATE_CONFIG": str(CONFIGS / config),
            "FAKE_ACCELERATE_OUT": str(records),
            "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
        },
        timeout=60,
    )
    assert status == 0, log
    port = env.get("MAIN_PROCESS_PORT", str(20000 + job_id % 10000))
    for rank, node in enumerate(["node1", "node2"]):
        record = json.loads((records / node).read_text())
        flags, command = split_launch(record["argv"])
        assert flags == {
            "--machine_rank": str(rank),
            "--config_file": str(CONFIGS / config),
            "--num_machines": "2",
            "--num_processes": str(2 * processes_per_node),
            "--main_process_ip": "127.0.0.1",  # node1's NodeAddr
            "--main_process_port": port,
            "--deepspeed_multinode_launcher": "standard",
        }
        assert command == [str(TRAIN_SCRIPT), *training_args]
        assert record["node_id"] == str(rank)
        assert record["use_cpu"] == use_cpu
    assert dict(LAUNCHER_LINE.findall(log)) == {"node1": "0", "node2": "1"}


def test_script_rejects_a_missing_config(slurm, tmp_path):
    missing = tmp_path / "no-such-config.yaml"
    status, _, log = sbatch(
        slurm, tmp_path / "job.log", [], env={"ACCELERATE_CONFIG": str(missing)}, timeout=60
    )
    assert status == 2
    assert f"accelerate config {missing} not found" in log
    assert not LAUNCHER_LINE.search(log)


# --- a tiny CPU training job on both nodes -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory) -> list[str]:
    """Training flags for 2 optimizer steps of 2 processes (8 samples per corpus, batches of 2)."""
    root = tmp_path_factory.mktemp("slurm_tiny_job")
    write_synthetic_corpus(
        str(root / "corpus"),
        num_docs=16,
        num_pairs=16,
        num_eval=0,
        docs_per_shard=4,
        pairs_per_shard=4,
        image_size=64,
        seed=0,
    )
    lm = save_tiny_lm("llama", root / "lm")
    tokenizer = save_byte_tokenizer(root / "tokenizer")
    return [
        f"--vision_encoder_path={VISION_ENCODER}",
        "--vision_encoder_pretrained=none",
        f"--lm_path={lm}",
        f"--tokenizer_path={tokenizer}",
        f"--omnicorpus_shards={root / 'corpus' / 'interleaved'}",
        f"--omnicorpus_image_prefix={root / 'corpus' / 'images'}",
        f"--laion_shards={root / 'corpus' / 'pairs'}",
        "--precision=fp32",
        "--workers=0",
        "--num_epochs=1",
        "--batch_size_interleaved=2",
        "--batch_size_laion=2",
        "--max_tokens_interleaved=128",
        "--max_tokens_laion=32",
        "--train_num_samples_interleaved=8",
        "--train_num_samples_laion=8",
        "--logging_steps=1",
    ]


@pytest.fixture(scope="module")
def losses_by_config() -> dict:
    return {}


@pytest.mark.parametrize(
    "config",
    ["accelerate_config_ddp.yaml", "accelerate_config_zero1.yaml"],
    ids=["ddp", "zero1"],
)
def test_training_job_on_two_nodes(slurm, tmp_path, tiny_job, losses_by_config, config):
    env = {"ACCELERATE_CONFIG": str(CONFIGS / config)}
    if "zero" in config:
        # DeepSpeed compiles its CPU communication op on first use (minutes on 2 cores). A cache
        # of this checkout's own keeps it built: in the shared default cache, builds by another
        # ninja version (system vs venv) count as changed and are redone every time.
        env["TORCH_EXTENSIONS_DIR"] = str(REPO / ".cache" / "torch_extensions")
    status, _, log = sbatch(
        slurm,
        tmp_path / "job.log",
        [*tiny_job, f"--external_save_dir={tmp_path}", "--run_name=tiny"],
        env=env,
    )
    assert status == 0, log
    assert dict(LAUNCHER_LINE.findall(log)) == {"node1": "0", "node2": "1"}, log

    run = tmp_path / "tiny"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 8 samples per corpus in batches of 2 on each of 2 processes: 2 steps (4 on one process).
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        for key in ("loss", "loss_interleaved", "loss_laion"):
            assert math.isfinite(row[key]), row

    checkpoint = run / "checkpoint-2"
    assert (run / "latest").read_text().strip() == "checkpoint-2"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 2
    weights = torch.load(checkpoint / "checkpoint.pt", weights_only=True)
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    # one data-loader state per process: 2 processes, no more
    assert sorted(p.name for p in checkpoint.glob("loaders_rank*.json")) == [
        "loaders_rank0.json",
        "loaders_rank1.json",
    ]
    if "zero" in config:
        assert (checkpoint / "deepspeed").is_dir()  # ZeRO-sharded optimizer states
    else:
        assert (checkpoint / "optimizer.pt").is_file()

    # ZeRO-1 only shards the optimizer: the losses are DDP's.
    losses_by_config[config] = [row["loss"] for row in rows]
    if len(losses_by_config) == 2:
        ddp, zero1 = losses_by_config.values()
        assert zero1 == pytest.approx(ddp, rel=1e-5)


def test_failing_job_fails_sbatch(slurm, tmp_path, tiny_job):
    status, _, log = sbatch(
        slurm,
        tmp_path / "job.log",
        [*tiny_job, f"--external_save_dir={tmp_path}", "--no_such_flag"],
        env={"ACCELERATE_CONFIG": str(CONFIGS / "accelerate_config_ddp.yaml")},
    )
    assert status != 0, log
    assert "unrecognized arguments: --no_such_flag" in log
    assert dict(LAUNCHER_LINE.findall(log)) == {"node1": "0", "node2": "1"}, log
    assert re.search(r"srun finished with status [1-9]", log), log
