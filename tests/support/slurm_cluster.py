"""A throw-away Slurm 22.05 cluster on this machine: one controller and simulated compute nodes.

munged (its own key and socket), slurmctld, and one `slurmd -N nodeN` per simulated node (the
Debian build has multiple-slurmd). Every node listens on its own port, names 127.0.0.1 as its
address (`NodeAddr`; the names `nodeN` do not resolve) and claims all of this machine's CPUs
(`SlurmdParameters=config_overrides`), so every node can run a task at the same time. No
accounting, no cgroups (`proctrack/linuxproc`, `task/none`). Config, state, spool, pid files,
logs and the munge key and socket all live under one directory; the ports are free ones.
Needs Debian's packages (`bash scripts/ci/install_services.sh`).

Library:
    with SlurmCluster("/tmp/slurm") as cluster:
        subprocess.run(["sbatch", "--wait", "job.sbatch"], env={**os.environ, **cluster.env()})

CLI, from the repository root:
    python -m tests.support.slurm_cluster start --dir /tmp/slurm   # prints `export SLURM_CONF=...`
    python -m tests.support.slurm_cluster stop --dir /tmp/slurm
"""

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from .local_services import free_port_block, is_running, tail

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sinfo", "squeue", "scancel", "scontrol")
# Every daemon (and so every slurmstepd that a slurmd forks) carries this variable, set to the
# cluster's directory: stop() finds what is left of a cluster by it, from any process.
MARKER = "OPEN_FLAMINGO_SLURM_CLUSTER"


class SlurmClusterError(RuntimeError):
    """The cluster could not be started (the message carries the relevant log's tail)."""


def missing_binaries() -> list[str]:
    """The programs this module needs that are not installed."""
    return [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]


def _which(name: str) -> str | None:
    # The daemons live in /usr/sbin, which is not on every user's PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _marked_process_trees(marker: bytes) -> list[int]:
    """Pids of the processes whose environment holds `marker`, and of all their descendants."""
    children: dict[int, list[int]] = {}
    marked = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone, or not ours to read
        children.setdefault(ppid, []).append(pid)
        if marker in environ:
            marked.append(pid)
    found, todo = set(), list(marked)
    while todo:
        pid = todo.pop()
        if pid not in found and pid != os.getpid():
            found.add(pid)
            todo.extend(children.get(pid, []))
    return sorted(found)


class SlurmCluster:
    """A controller and `num_nodes` simulated nodes (node1, node2, ...) whose state lives under
    `root`.

    `start()` returns once `sinfo` shows every node idle (bounded by `timeout_s`) and cleans up
    on failure; `stop()` cancels the jobs and kills every daemon, slurmstepd and job process of
    this directory (also ones left by an earlier process).
    """

    def __init__(
        self,
        root: "str | os.PathLike",
        *,
        num_nodes: int = 2,
        cpus_per_node: int | None = None,
        timeout_s: float = 30.0,
    ):
        if num_nodes < 1:
            raise ValueError("num_nodes must be >= 1")
        self.root = Path(root).resolve()
        self.conf = self.root / "slurm.conf"
        self.nodes = [f"node{i}" for i in range(1, num_nodes + 1)]
        self.cpus_per_node = cpus_per_node or os.cpu_count() or 1
        self.timeout_s = timeout_s
        self.partition = "debug"
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._marker = f"{MARKER}={self.root}"

    def env(self) -> dict[str, str]:
        """The variables that point the Slurm commands (sbatch, srun, sinfo...) at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def client_env(self) -> dict[str, str]:
        """This process's environment for a Slurm command of this cluster: without the SLURM_*
        variables of any job this process runs in, with SLURM_CONF."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        return {**env, **self.env()}

    def command(self, argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster; raises with its output on failure."""
        result = subprocess.run(
            argv, env=self.client_env(), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise SlurmClusterError(
                f"{' '.join(argv)} failed with status {result.returncode}:\n"
                + result.stdout
                + result.stderr
            )
        return result

    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- start and stop --------------------------------------------------------------------

    def start(self) -> None:
        """Write the config, start munged, slurmctld and the slurmds, and wait until every node
        is idle."""
        missing = missing_binaries()
        if missing:
            raise SlurmClusterError(
                f"Slurm is not installed (missing {', '.join(missing)}): "
                "run `bash scripts/ci/install_services.sh`"
            )
        self.stop()  # leftovers of an earlier run in this directory
        self.root.mkdir(parents=True, exist_ok=True)
        # Slurm's and munge's clients (the job's user) must reach the munge socket below.
        self.root.chmod(0o755)
        for sub in ("munge", "state", "spool", "run", "log"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
            (self.root / sub).mkdir(mode=0o755)
        deadline = time.monotonic() + self.timeout_s
        try:
            self._write_conf()
            self._start_munged(deadline)
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            for node in self.nodes:
                slurmd = [_which("slurmd"), "-D", "-N", node, "-f", str(self.conf)]
                self._spawn(f"slurmd-{node}", slurmd)
            self._wait_idle(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel the jobs, then kill every process of this cluster and wait until all are gone."""
        with self._lock:
            controller = self._procs.get("slurmctld")
            if controller is not None and controller.poll() is None:
                self._cancel_jobs()
            pids = self.processes()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    os.kill(pid, signal.SIGKILL)
            for proc in self._procs.values():
                proc.wait(timeout=10)  # reap our own children
            self._procs.clear()
            deadline = time.monotonic() + 10
            for pid in pids:
                while is_running(pid):
                    if time.monotonic() > deadline:
                        raise SlurmClusterError(f"process {pid} survived SIGKILL")
                    time.sleep(0.02)

    def processes(self) -> list[int]:
        """Pids of the live processes of this cluster: its daemons, their slurmstepds and the
        jobs' processes (found from any process, by the daemons' environment)."""
        return [pid for pid in _marked_process_trees(self._marker.encode()) if is_running(pid)]

    def _cancel_jobs(self) -> None:
        """scancel every job and give Slurm a few seconds to end their processes cleanly."""
        env = self.client_env()
        subprocess.run(
            ["scancel", f"--partition={self.partition}"], env=env, capture_output=True, timeout=10
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            queue = subprocess.run(
                ["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=10
            )
            if queue.returncode != 0 or not queue.stdout.strip():
                return
            time.sleep(0.1)

    # --- helpers ---------------------------------------------------------------------------

    def _write_conf(self) -> None:
        base = free_port_block(1 + len(self.nodes), SlurmClusterError)
        self.controller_port, node_ports = base, range(base + 1, base + 1 + len(self.nodes))
        user = pwd.getpwuid(os.getuid()).pw_name  # root, or a user running a private cluster
        root = self.root
        settings = {
            "ClusterName": "openflamingo",
            "SlurmctldHost": f"{socket.gethostname().split('.')[0]}(127.0.0.1)",
            "SlurmctldPort": self.controller_port,
            "SlurmUser": user,
            "SlurmdUser": user,
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={root / 'munge/munge.socket'}",
            "StateSaveLocation": root / "state",
            "SlurmdSpoolDir": root / "spool/%n",
            "SlurmctldPidFile": root / "run/slurmctld.pid",
            "SlurmdPidFile": root / "run/slurmd-%n.pid",
            "SlurmctldLogFile": root / "log/slurmctld.log",
            "SlurmdLogFile": root / "log/slurmd-%n.log",
            # cgroup plugins do not work in containers like this one.
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "MpiDefault": "none",
            "SwitchType": "switch/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "SchedulerType": "sched/builtin",
            # Each node takes its CPUs from this file, not from the (shared) hardware.
            "SlurmdParameters": "config_overrides",
            "PropagateResourceLimits": "NONE",
            "MailProg": "/bin/true",  # no mail on this machine
            "ReturnToService": 2,
            "KillWait": 2,
            # Start a job as soon as it is submitted (the default batches them for up to 3 s).
            "SchedulerParameters": "batch_sched_delay=0",
            # `sbatch --wait` polls every 2 s while this is at most 4 s (else every 8, then 32 s).
            # A finished job's record is kept at least this long (purged within a minute).
            "MinJobAge": 4,
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        for node, port in zip(self.nodes, node_ports, strict=True):
            lines.append(
                f"NodeName={node} NodeAddr=127.0.0.1 Port={port} CPUs={self.cpus_per_node} "
                "State=UNKNOWN"
            )
        lines.append(
            f"PartitionName={self.partition} Nodes={','.join(self.nodes)} Default=YES "
            "MaxTime=INFINITE State=UP"
        )
        self.conf.write_text("\n".join(lines) + "\n")

    def _start_munged(self, deadline: float) -> None:
        munge = self.root / "munge"
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = munge / "munge.socket"
        if len(str(socket_path)) > 100:  # a Unix socket path holds at most 107 bytes
            raise SlurmClusterError(f"{socket_path} is too long for a socket: use a shorter --dir")
        self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                # Accept a socket whose parent folders others cannot enter (pytest's 0700 temp
                # folders): only this user's daemons and jobs talk to it.
                "--force",
                f"--socket={socket_path}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={self.root / 'log/munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
                "--num-threads=2",
            ],
        )
        while not socket_path.exists():
            self._check_alive("munged")
            if time.monotonic() > deadline:
                raise SlurmClusterError(
                    f"munged did not create {socket_path} within {self.timeout_s} s\n"
                    + self._logs("munged")
                )
            time.sleep(0.02)

    def _spawn(self, name: str, argv: list[str]) -> None:
        """Start a daemon in the foreground of a new session, marked as one of this cluster's."""
        env = {**self.client_env(), MARKER: str(self.root)}
        with open(self.root / "log" / f"{name}.out", "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                start_new_session=True,  # outlives a CLI `start`; no terminal signals
            )
        self._procs[name] = proc

    def _logs(self, name: str) -> str:
        logs = self.root / "log"
        return tail(logs / f"{name}.log") + "\n" + tail(logs / f"{name}.out")

    def _check_alive(self, *names: str) -> None:
        for name in names or tuple(self._procs):
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise SlurmClusterError(
                    f"{name} exited with status {proc.returncode}\n" + self._logs(name)
                )

    def _node_states(self) -> dict[str, str]:
        result = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=10,
        )
        if result.returncode != 0:
            return {}
        return dict(line.split() for line in result.stdout.splitlines() if line.strip())

    def _wait_idle(self, deadline: float) -> None:
        """Poll sinfo until every node is idle."""
        states: dict[str, str] = {}
        while True:
            self._check_alive()
            states = self._node_states()
            if all(states.get(node) == "idle" for node in self.nodes):
                return
            if time.monotonic() > deadline:
                raise SlurmClusterError(
                    f"the nodes are not idle after {self.timeout_s} s (sinfo: {states or 'no answer'})\n"
                    + "\n".join(self._logs(name) for name in self._procs if name != "munged")
                )
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--dir", required=True, help="the cluster's directory (created)")
    parser.add_argument("--nodes", type=int, default=2, help="simulated nodes (default 2)")
    args = parser.parse_args(argv)
    cluster = SlurmCluster(args.dir, num_nodes=args.nodes)
    if args.command == "stop":
        cluster.stop()
        print(f"stopped the Slurm daemons of {cluster.root}")
        return
    started = time.monotonic()
    cluster.start()
    print(
        f"# Slurm up in {time.monotonic() - started:.1f} s with nodes {','.join(cluster.nodes)}; "
        f"logs in {cluster.root / 'log'}"
    )
    for name, value in cluster.env().items():
        print(f"export {name}={value}")


if __name__ == "__main__":
    main()
