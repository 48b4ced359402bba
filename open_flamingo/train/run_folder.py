"""One run per run folder, and only resumes that continue the data exactly.

* `RunLock`: the main process holds an exclusive lock on `<run>/.lock` for the run's life
  (a POSIX record lock, `fcntl.lockf`, which NFS shares between hosts); the file says who
  holds it (host, pid, start time). A second run on the folder is refused, naming the holder.
  A lock left by a process that died is free (the kernel drops a dead process's locks); the
  new run takes it and logs whose it was. A record lock belongs to the process, so the
  DataLoader workers forked from the trainer, which inherit the file, do not hold it: after
  the trainer is killed its lock is free at once, even while orphaned workers wind down (with
  `flock` they kept it, and a resume right after a SIGKILL was refused).
* `refuse_new_run_over_checkpoints`: a run started without `--resume_from_checkpoint` on a
  folder that already holds checkpoints would overwrite them and `latest`: refused.
* `claim_run_folder` does both on the main process, before the model loads, and stops every
  rank alike.
* `data_order` / `check_data_order`: the settings that fix which samples each step reads are
  stored in every checkpoint; a resume with any of them changed is refused, listing them.
"""

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from .agreement import any_rank, from_main
from .checkpoint_io import CheckpointError, read_json
from .checkpointing import LATEST, TRAINER_STATE, checkpoint_steps, resolve_resume
from .config import TrainConfig

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunFolderBusy(RuntimeError):
    """Another live run holds the run folder's lock."""


class RunLock:
    """The exclusive lock of a run folder, held from `acquire()` until `release()` or the
    process's end."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._file = None

    def acquire(self) -> None:
        """Take the lock, or raise RunFolderBusy naming the run that holds it."""
        # The one file object of this process on the lock file: closing any other would drop
        # the record lock.
        file = open(self.path, "a+")  # noqa: SIM115 (open while the lock is held)
        try:
            fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
                logger.warning(
                    "cannot lock %s (%s): this file system has no locks, so a second run on "
                    "this folder would not be stopped",
                    self.path,
                    error.strerror,
                )
                file.close()
                return
            holder = _holder(file)
            file.close()
            raise RunFolderBusy(
                f"{self.path.parent} is in use by another run: pid {holder.get('pid', '?')} on "
                f"host {holder.get('host', '?')}, started {holder.get('start', '?')}. Wait for "
                "it to end, or give this run another --run_name / --external_save_dir."
            ) from None
        previous = _holder(file)
        if previous:
            logger.warning(
                "taking over the lock of %s from pid %s on host %s (started %s), which is no "
                "longer running",
                self.path.parent,
                previous.get("pid", "?"),
                previous.get("host", "?"),
                previous.get("start", "?"),
            )
        me = {"host": socket.gethostname(), "pid": os.getpid(), "start": time.strftime("%FT%T%z")}
        file.seek(0)
        file.truncate()
        file.write(json.dumps(me))
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.close()  # closing drops the lock
            self._file = None


def _holder(file) -> dict:
    """What the lock file says about its holder ({} when it is empty or unreadable)."""
    file.seek(0)
    try:
        holder = json.loads(file.read() or "{}")
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def refuse_new_run_over_checkpoints(run_dir: Path, steps: list[int]) -> None:
    """A new run (no --resume_from_checkpoint) must not replace the checkpoints of `run_dir`."""
    if steps:
        names = ", ".join(f"checkpoint-{s}" for s in steps[-3:])
        raise RunFolderBusy(
            f"{run_dir} already holds checkpoints ({names}). Continue that run with "
            "--resume_from_checkpoint latest, or start a new one under another --run_name / "
            "--external_save_dir."
        )


def data_order(config: TrainConfig, num_processes: int, loaders: dict) -> dict:
    """The settings that fix which samples each step reads, as stored in a checkpoint: the
    number of processes, these settings under their flags' names, and each corpus's shard
    count."""
    interleaved, laion = config.interleaved, config.laion
    order = {
        "num_processes": num_processes,
        "workers": interleaved.workers,
        "batch_size_interleaved": interleaved.batch_size,
        "batch_size_laion": laion.batch_size,
        "gradient_accumulation_steps": config.optim.gradient_accumulation_steps,
        "seed": config.seed,
        "dataset_resampled": interleaved.resampled,
        "interleaved_dataset": interleaved.dataset_type,
        "laion_dataset": laion.dataset_type,
        "train_num_samples_interleaved": interleaved.num_samples,
        "train_num_samples_laion": laion.num_samples,
    }
    if config.mixture is not None:  # its sources' loaders are the loaders
        order["mixture"] = config.mixture.data_order()
    for name, loader in loaders.items():
        order[f"{name}_shards"] = loader.state_dict()["num_shards"]
    return order


def check_data_order(saved: dict, current: dict, path: Path) -> None:
    """Refuse a resume whose data order would differ from the saved run's, listing what
    changed (a resume that reads a batch twice or never is not exact)."""
    changes = [
        f"{key} {saved.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if changes:
        raise CheckpointError(
            f"{path} cannot continue exactly with these settings, which fix the order of the "
            f"data: {'; '.join(changes)}. Resume with the settings it was saved with (the same "
            "number of processes, --workers, batch sizes, --gradient_accumulation_steps, --seed "
            "and corpora), or start a new run from its weights with --load_from_pretrained."
        )


def remove_unused_run_folder(run_dir: Path) -> None:
    """Remove the folder a failed run created, if the run left nothing in it but its lock."""
    entries = {path.name for path in run_dir.iterdir()} if run_dir.is_dir() else {}
    if entries <= {LOCK_FILE}:
        shutil.rmtree(run_dir, ignore_errors=True)


def claim_run_folder(accelerator, run_dir: Path, resuming: bool) -> RunLock:
    """Lock `run_dir` (main process) and refuse a new run over its checkpoints; every rank
    raises SystemExit alike when refused. Release the returned lock when the run ends."""
    lock, refusal = RunLock(run_dir), None
    if accelerator.is_main_process:
        try:
            lock.acquire()
            if not resuming:
                refuse_new_run_over_checkpoints(run_dir, checkpoint_steps(run_dir))
        except RunFolderBusy as error:
            lock.release()
            refusal = error
    if any_rank(accelerator, refusal is not None):
        raise SystemExit(f"error: {refusal or 'the main process refused the run folder'}")
    return lock


def choose_resume(accelerator, spec: str, run_dir: Path, order: dict) -> Path | None:
    """The checkpoint to resume (`resolve_resume`, then `check_data_order`), chosen and checked
    by the main process; the same answer on every rank, which raise SystemExit alike when it
    cannot be used. None: "latest" of a run without checkpoints."""
    found, step, error = 0, 0, None
    if accelerator.is_main_process:
        try:
            path = resolve_resume(spec, run_dir)
            if path is not None:
                saved = read_json(path / TRAINER_STATE)
                check_data_order(saved.get("data_order") or {}, order, path)
                found = 1
                step = int(path.name.removeprefix("checkpoint-")) if spec == LATEST else 0
        except CheckpointError as caught:
            error = caught
    failed, found, step = from_main(accelerator, [int(error is not None), found, step])
    if failed:
        reason = error or "refused by the main process (see its log)"
        raise SystemExit(f"error: --resume_from_checkpoint {spec}: {reason}")
    if not found:
        return None
    return run_dir / f"checkpoint-{step}" if spec == LATEST else Path(spec)
