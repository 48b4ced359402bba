"""Stopping cleanly when the cluster says the job must end: a time limit ahead, or preemption.

`scripts/slurm/train_omnicorpus.sbatch` asks Slurm for SIGUSR1 a few minutes before the time
limit (`--signal=B:USR1@<seconds>`) and forwards it to every training process. Slurm sends
SIGTERM at the time limit and on preemption; accelerate's launcher forwards it to the training
processes and kills them about 5 s later, which is enough only for small checkpoints.

`StopRequest` makes both signals set a flag (nothing else happens inside the handler). After
each optimizer step the trainer asks every rank (one small all-reduce); if any got a signal, all
of them save a complete checkpoint, the main process writes the requeue marker (the file named
by $OPEN_FLAMINGO_REQUEUE_FILE, which the sbatch script reads: accelerate's launcher turns any
non-zero exit status into 1), and every process exits with REQUEUE_EXIT_CODE.
"""

import logging
import os
import signal
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: stopped early on purpose, resume to continue
REQUEUE_FILE_ENV = "OPEN_FLAMINGO_REQUEUE_FILE"
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """A flag set by SIGUSR1 or SIGTERM while installed (a context manager; main thread only)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "not in the main thread: SIGUSR1 / SIGTERM will not stop the run cleanly"
            )
            return self
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


def mark_for_requeue(checkpoint: Path) -> None:
    """Tell the sbatch script (main process only) that the run stopped early and saved
    `checkpoint`, so the job should be requeued."""
    marker = os.environ.get(REQUEUE_FILE_ENV)
    if marker:
        Path(marker).write_text(f"{checkpoint}\n")
