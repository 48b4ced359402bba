"""Run metrics: always a local `metrics.jsonl`, optionally wandb (online or offline), and the
numbers that say how fast a step is (samples/s, tokens/s, MFU) and how much GPU memory it holds."""

import json
import os
from pathlib import Path

import torch

from .config import LoggingConfig

# Dense bf16 peak, FLOP/s, by CUDA device name fragment (for MFU).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def peak_flops(override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def peak_memory_gib(device: torch.device) -> float | None:
    """The most GPU memory this process's tensors have held so far (None off CUDA)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


class MetricsLogger:
    """Writes one JSON row per logged step to `<run>/metrics.jsonl` (main process only) and
    forwards the same numbers to wandb when asked."""

    def __init__(self, run_dir: Path, accelerator, logging: LoggingConfig):
        self.accelerator = accelerator
        self.path = run_dir / "metrics.jsonl"
        self.wandb = logging.report_to_wandb
        self.save_checkpoints = logging.save_checkpoints_to_wandb
        if self.wandb:
            if logging.offline:
                os.environ["WANDB_MODE"] = "offline"
            os.environ.setdefault("WANDB_DIR", str(run_dir))
            init = {"wandb": {"name": logging.run_name, "dir": str(run_dir)}}
            if logging.wandb_entity:
                init["wandb"]["entity"] = logging.wandb_entity
            # the run's config: every flag, and the processes (as the trainer recorded them)
            processes = {"world_size": accelerator.num_processes, "rank": accelerator.process_index}
            config = {**logging.flags, **processes}
            accelerator.init_trackers(logging.wandb_project, config=config, init_kwargs=init)

    def save_checkpoint(self, path: Path) -> None:
        """`--save_checkpoints_to_wandb`: upload a checkpoint's released weights (`path`, its
        checkpoint.pt) to the wandb run, under `<checkpoint folder>/checkpoint.pt`."""
        if self.wandb and self.save_checkpoints and self.accelerator.is_main_process:
            run = self.accelerator.get_tracker("wandb", unwrap=True)
            run.save(str(path), base_path=str(path.parent.parent), policy="now")

    def log(self, row: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.path, "a") as out:
            out.write(json.dumps(row) + "\n")
        if self.wandb:
            self.accelerator.log({k: v for k, v in row.items() if v is not None}, step=row["step"])

    def close(self) -> None:
        if self.wandb:
            self.accelerator.end_training()


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; when a resumed run logged a step again, the last row wins."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row
    return [rows[step] for step in sorted(rows)]
