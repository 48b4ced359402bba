"""The training job on one GPU under the accelerate configs the seed uses, end to end.

    python scripts/gpu_training_runs.py --out /tmp/gpu_training      # on a GPU machine
    python scripts/gpu_training_runs.py --out /tmp/smoke --cpu       # check this script on a CPU

Each run is `accelerate launch open_flamingo/train/train_omnicorpus.py`, one process, on the
seeded synthetic shapes corpus with the demo's tiny random-init LLaMA (byte-level tokenizer) and
a random-init ViT-Tiny-16, STEPS optimizer steps, a checkpoint every CHECKPOINT_EVERY steps.
In order of importance (the GPU is lent for minutes):

1. `zero1`: accelerate_config_zero1.yaml, `--precision bf16` (DeepSpeed's bf16 mode).
2. `zero1-killed`: the same run, SIGKILLed once step KILL_AFTER is logged, then resumed with
   `--resume_from_checkpoint latest`. Steps after the last checkpoint must repeat run 1's
   losses; steps before the kill compare two fresh starts, i.e. the GPU's run-to-run noise.
3. `fsdp`: accelerate_config_fsdp.yaml (FSDP2), `--precision amp_bf16`.
4. `fsdp-killed`: as 2, under FSDP2.
5. `zero1-slurm`: the seed's config (ZeRO-1, optimizer in DeepSpeed's CPU Adam, which DeepSpeed
   builds on first use), `--precision amp_bf16`.

Prints one JSON line per run (config, precision, exit status, seconds, losses by step, peak GPU
memory, checkpoints written; for a killed run also the resumed step and both comparisons) and a
last line with the device and the runs skipped. `--cpu` runs 1, 2 and 5 on the CPU in float32
(FSDP needs GPUs). `--budget-s` skips runs that would start with under a minute left.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from open_flamingo.data.synthetic import write_synthetic_corpus
from open_flamingo.demo.inputs import prepare_tiny_llama, prepare_vision_encoder
from open_flamingo.demo.launch import flag_args, free_port
from open_flamingo.demo.settings import VISION_ENCODER
from open_flamingo.tools.paths import ACCELERATE_CONFIGS, REPO, TRAIN_SCRIPT
from open_flamingo.train.checkpointing import checkpoint_steps
from open_flamingo.train.metrics import read_metrics

STEPS = 8
CHECKPOINT_EVERY = 2
KILL_AFTER = 5  # checkpoint-4 is complete when step 5 is logged; step 5 is lost with the kill
BATCH_INTERLEAVED, BATCH_LAION = 4, 8
RUN_TIMEOUT_S = 300
PLAN = [  # (name, accelerate config, --precision); "<run>-killed" is compared with "<run>"
    ("zero1", "accelerate_config_zero1.yaml", "bf16"),
    ("zero1-killed", "accelerate_config_zero1.yaml", "bf16"),
    ("fsdp", "accelerate_config_fsdp.yaml", "amp_bf16"),
    ("fsdp-killed", "accelerate_config_fsdp.yaml", "amp_bf16"),
    ("zero1-slurm", "accelerate_config_zero1_slurm.yaml", "amp_bf16"),
]


def train_command(config: str, precision: str, run_dir: Path, inputs: dict) -> list:
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    launch += ["--config_file", str(ACCELERATE_CONFIGS / config)]
    launch += ["--num_processes", "1", "--num_machines", "1"]
    launch += ["--main_process_port", str(free_port())]
    flags = {
        "vision_encoder_path": VISION_ENCODER,
        "vision_encoder_pretrained": inputs["vision"],
        "lm_path": inputs["lm"],
        "tokenizer_path": inputs["lm"],
        "cross_attn_every_n_layers": 1,
        "omnicorpus_shards": Path(inputs["corpus"]["interleaved_shards"][0]).parent,
        "omnicorpus_image_prefix": inputs["corpus"]["image_prefix"],
        "laion_shards": Path(inputs["corpus"]["pair_shards"][0]).parent,
        "batch_size_interleaved": BATCH_INTERLEAVED,
        "batch_size_laion": BATCH_LAION,
        "max_tokens_interleaved": 128,
        "max_tokens_laion": 48,
        "train_num_samples_interleaved": STEPS * BATCH_INTERLEAVED,
        "train_num_samples_laion": STEPS * BATCH_LAION,
        "learning_rate": 1e-3,
        "lr_scheduler": "cosine",
        "warmup_steps": 2,
        "precision": precision,
        "workers": 1,
        "seed": 7,
        "logging_steps": 1,
        "checkpointing_steps": CHECKPOINT_EVERY,
        "external_save_dir": run_dir.parent,
        "run_name": run_dir.name,
    }
    return [*launch, str(TRAIN_SCRIPT), *flag_args(flags)]


def environment(cpu: bool) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("ACCELERATE_USE_CPU", None)  # with it, accelerate runs DDP instead of DeepSpeed
    # DeepSpeed's CPU Adam (and, on a CPU, its communication op) are built once, here
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def losses(run_dir: Path) -> dict[int, float]:
    path = run_dir / "metrics.jsonl"
    return {row["step"]: row["loss"] for row in read_metrics(path)} if path.exists() else {}


def start(command: list, log: Path, env: dict) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill_launch(process: subprocess.Popen) -> None:
    """SIGKILL a launch and every process under it, as a node that fails would, and wait for
    them all. accelerate's launcher (torch elastic) starts each trainer in a session of its own:
    killing the launcher's process group alone leaves the trainers running, orphaned, still
    training and writing checkpoints beside the run that resumes."""
    try:
        tree = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    os.killpg(process.pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    process.wait()
    _, alive = psutil.wait_procs(tree, timeout=60)
    if alive:
        raise RuntimeError(f"processes of the killed launch still run: {[p.pid for p in alive]}")


def wait(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_launch(process)
        return -signal.SIGKILL


def kill_after_step(process: subprocess.Popen, run_dir: Path, step: int, timeout: float) -> bool:
    """SIGKILL the whole launch once `step` is logged; False if the run ended or timed out first."""
    deadline = time.monotonic() + timeout
    while step not in losses(run_dir):
        if process.poll() is not None or time.monotonic() > deadline:
            wait(process, 0)
            return False
        time.sleep(0.1)
    kill_launch(process)
    return True


def report(name, config, precision, run_dir: Path, status: int, seconds: float, extra=None):
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    peaks = [row["peak_memory_gib"] for row in rows if row.get("peak_memory_gib") is not None]
    result = {
        "run": name,
        "config": config,
        "precision": precision,
        "status": status,
        "seconds": round(seconds, 1),
        "losses": {row["step"]: row["loss"] for row in rows},
        "peak_memory_gib": max(peaks) if peaks else None,
        "checkpoints": checkpoint_steps(run_dir) if run_dir.exists() else [],
        **(extra or {}),
    }
    print(json.dumps(result), flush=True)
    if status != 0:
        log = (run_dir.parent / f"{run_dir.name}.log").read_text(errors="replace")
        print(log[-3000:], file=sys.stderr, flush=True)
    return result


def relative_differences(got: dict, want: dict, steps) -> dict[int, float | None]:
    return {
        s: abs(got[s] - want[s]) / abs(want[s]) if s in got and s in want else None for s in steps
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (corpus, LM, runs)")
    parser.add_argument("--cpu", action="store_true", help="float32 on the CPU, without FSDP")
    parser.add_argument("--runs", nargs="+", choices=[run[0] for run in PLAN], help="a subset")
    parser.add_argument(
        "--budget-s",
        type=float,
        # under scripts/gpu_benchmarks.sh: its limit for this command, less time to report
        default=float(os.environ.get("RUN_LIMIT_S", "inf")) - 10,
        help="seconds for the whole script (default: $RUN_LIMIT_S - 10, else no limit)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = environment(args.cpu)
    device = "cpu"
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA GPU here; --cpu checks this script on the CPU (float32)")
        device = torch.cuda.get_device_name()

    inputs = {
        "lm": prepare_tiny_llama(out / "lm", seed=0),
        "vision": prepare_vision_encoder(out / "vision", seed=0, pretrain_steps=0),
        "corpus": write_synthetic_corpus(
            str(out / "corpus"),
            num_docs=STEPS * BATCH_INTERLEAVED,
            num_pairs=STEPS * BATCH_LAION,
            num_eval=0,
            docs_per_shard=BATCH_INTERLEAVED,
            pairs_per_shard=BATCH_LAION,
            seed=0,
        ),
    }
    plan = [run for run in PLAN if run[0] in (args.runs or [run[0] for run in PLAN])]
    if args.cpu:
        plan = [run for run in plan if not run[0].startswith("fsdp")]
    results, skipped = {}, []
    for name, config, precision in plan:
        precision = "fp32" if args.cpu else precision
        left = args.budget_s - (time.monotonic() - started)
        if left < 60:
            skipped.append(name)
            continue
        run_dir = out / "runs" / name
        log = run_dir.parent / f"{name}.log"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: metrics.jsonl is appended to
        log.unlink(missing_ok=True)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        command = train_command(config, precision, run_dir, inputs)
        begin = time.monotonic()
        process = start(command, log, env)
        comparison = {}
        if name.endswith("-killed"):
            if not kill_after_step(process, run_dir, KILL_AFTER, min(left, RUN_TIMEOUT_S)):
                status = process.returncode if process.returncode else 1
                results[name] = report(name, config, precision, run_dir, status, 0.0)
                continue
            reference = results.get(name.removesuffix("-killed"), {}).get("losses", {})
            resumed_from = checkpoint_steps(run_dir)[-1]  # what `latest` resumes
            comparison = {
                "resumed_from_step": resumed_from,
                # before the kill: two fresh starts, i.e. the run-to-run noise
                "fresh_start_vs_fresh_start": relative_differences(
                    losses(run_dir), reference, range(1, KILL_AFTER + 1)
                ),
            }
            command += ["--resume_from_checkpoint", "latest"]
            process = start(command, log, env)
        left = args.budget_s - (time.monotonic() - started)
        status = wait(process, min(max(left, 1), RUN_TIMEOUT_S))
        seconds = time.monotonic() - begin
        if comparison:
            comparison["resumed_vs_uninterrupted"] = relative_differences(
                losses(run_dir), reference, range(comparison["resumed_from_step"] + 1, STEPS + 1)
            )
        results[name] = report(name, config, precision, run_dir, status, seconds, comparison)

    print(json.dumps({"device": device, "skipped": skipped}), flush=True)
    return 1 if any(result["status"] for result in results.values()) else 0
