"""Fixtures for tests against a real Slurm: a controller and two simulated nodes on this machine
(scripts/slurm_cluster.py), started once per test session when a test asks for it."""

import pytest

from conftest import load_script, require


def load_slurm_cluster():
    """scripts/slurm_cluster.py as a module (scripts/ is not a package)."""
    return load_script("slurm_cluster")


@pytest.fixture(scope="session")
def slurm_cluster_module():
    """scripts/slurm_cluster.py; skips (fails in CI) when Slurm is not installed."""
    slurm_cluster = load_slurm_cluster()
    missing = slurm_cluster.missing_binaries()
    require(
        not missing,
        f"Slurm is not installed (missing {', '.join(missing)}): "
        "run `bash scripts/ci/install_services.sh`",
    )
    return slurm_cluster


@pytest.fixture(scope="session")
def slurm(tmp_path_factory, slurm_cluster_module):
    """The running SlurmCluster (nodes node1 and node2). Run Slurm commands with
    `env=slurm.client_env()` (SLURM_CONF set, no SLURM_* of an enclosing job)."""
    cluster = slurm_cluster_module.SlurmCluster(tmp_path_factory.mktemp("slurm"), num_nodes=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
