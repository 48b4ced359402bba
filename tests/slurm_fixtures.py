"""Fixtures for tests against a real Slurm: a controller and two simulated nodes on this machine
(tests/support/slurm_cluster.py), started once per test session when a test asks for it."""

import pytest

from conftest import require
from support.slurm_cluster import SlurmCluster, missing_binaries


@pytest.fixture(scope="session")
def slurm_installed() -> None:
    """Skips (fails in CI) when Slurm is not installed."""
    missing = missing_binaries()
    require(
        not missing,
        f"Slurm is not installed (missing {', '.join(missing)}): "
        "run `bash scripts/ci/install_services.sh`",
    )


@pytest.fixture(scope="session")
def slurm(tmp_path_factory, slurm_installed):
    """The running SlurmCluster (nodes node1 and node2). Run Slurm commands with
    `env=slurm.client_env()` (SLURM_CONF set, no SLURM_* of an enclosing job)."""
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), num_nodes=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
