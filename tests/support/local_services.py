"""Helpers shared by the throw-away local services the tests run for real: the Ceph RADOS
Gateway (ceph_rgw.py) and the Slurm cluster (slurm_cluster.py)."""

import random
import socket
from pathlib import Path

# Below Linux's ephemeral ports, so that outgoing connections do not take them meanwhile.
PORT_RANGE = (20000, 32000)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(size: int, error: type[Exception]) -> int:
    """The first port of `size` consecutive free loopback ports (random base, bounded search);
    raises `error` when 100 tries find none."""
    for _ in range(100):
        base = random.randrange(PORT_RANGE[0], PORT_RANGE[1] - size)
        if all(port_is_free(base + i) for i in range(size)):
            return base
    raise error(f"no {size} consecutive free ports in {PORT_RANGE}")


def tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of a log, headed by its path, for error messages."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"({path} is missing)"
    return f"--- last lines of {path} ---\n" + "\n".join(text)


def is_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
