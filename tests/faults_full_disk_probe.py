"""Run under `accelerate launch` by tests/test_faults_checkpoints.py: train_omnicorpus.main with
one rank's checkpoint file written to /dev/full, which fails as a full disk does.

    accelerate launch ... tests/faults_full_disk_probe.py RANK FILE_NAME [training flags]
"""

import os
import sys
from pathlib import Path

from open_flamingo.train import checkpoint_io
from open_flamingo.train.train_omnicorpus import main


def full_disk_for(rank: int, name: str):
    """An opener that gives `rank` /dev/full in place of the file called `name`."""
    real_open = checkpoint_io._open_for_writing

    def opener(path: Path):
        if int(os.environ["RANK"]) == rank and path.name == name:
            return open("/dev/full", "wb")  # noqa: SIM115 (returned to the caller's `with`)
        return real_open(path)

    return opener


if __name__ == "__main__":
    checkpoint_io._open_for_writing = full_disk_for(int(sys.argv[1]), sys.argv[2])
    sys.exit(main(sys.argv[3:]))
