"""A throw-away one-host Ceph cluster with a RADOS Gateway: a real S3 endpoint on loopback.

One mon, one osd on `memstore` (RAM only), no mgr, and radosgw (beast) on 127.0.0.1:PORT.
Everything (config, mon store, osd, pid files, sockets, logs) lives under one directory, auth is
off, and a user with the given access/secret key is created. The daemons are started directly
(no systemd) and are killed with SIGKILL on stop: memstore holds nothing worth a clean shutdown.
Needs Debian's Ceph packages (`bash scripts/ci/install_services.sh`).

Library:
    with CephRGW("/tmp/ceph") as rgw:
        boto3.client("s3", endpoint_url=rgw.endpoint_url, aws_access_key_id=rgw.access_key, ...)
        rgw.stop_gateway()  # an S3 outage; the mon and osd keep running
        rgw.start_gateway()  # back on the same port

CLI, from the repository root:
    python -m tests.support.ceph_rgw start --dir /tmp/ceph   # prints the `export AWS_...` lines
    python -m tests.support.ceph_rgw stop --dir /tmp/ceph
"""

import argparse
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from .local_services import free_port_block, is_running, tail

BINARIES = ("monmaptool", "ceph-mon", "ceph-osd", "radosgw", "radosgw-admin")
# The Ceph tools run on Debian's Python (its `rados` module), never on a virtualenv's.
SYSTEM_PYTHON = "/usr/bin/python3"
RGW_POOLS = (
    ".rgw.root",
    "default.rgw.control",
    "default.rgw.meta",
    "default.rgw.log",
    "default.rgw.buckets.index",
    "default.rgw.buckets.data",
    "default.rgw.buckets.non-ec",
)
MON, OSD, GATEWAY = "mon.a", "osd.0", "client.rgw.gw"
PORT_BLOCK = 24  # mon, gateway, then the daemons' bind range

# Runs on SYSTEM_PYTHON: registers the osd and creates the rgw pools in one mon session.
# argv: conf, timeout_s, osd uuid, pools...; prints the new osd id.
_BOOTSTRAP = r"""
import json, sys
import rados
conf, timeout, osd_uuid, pools = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
cluster = rados.Rados(conffile=conf, conf={"client_mount_timeout": timeout,
                                           "rados_mon_op_timeout": timeout})
cluster.connect()
def command(**cmd):
    ret, out, err = cluster.mon_command(json.dumps(cmd), b"")
    if ret != 0:
        sys.exit(f"mon command {cmd} failed ({ret}): {err}")
    return out
osd_id = int(command(prefix="osd create", uuid=osd_uuid))
for pool in pools:
    command(prefix="osd pool create", pool=pool, pg_num=8)
    command(prefix="osd pool application enable", pool=pool, app="rgw")
cluster.shutdown()
print(osd_id)
"""


class CephRGWError(RuntimeError):
    """The cluster could not be started (the message carries the relevant log's tail)."""


def missing_binaries() -> list[str]:
    """The Ceph programs this module needs that are not installed."""
    return [name for name in (*BINARIES, SYSTEM_PYTHON) if shutil.which(name) is None]


def _ceph_env() -> dict[str, str]:
    """The environment without the virtualenv's Python settings or stray Ceph ones."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CEPH_ARGS", "CEPH_CONF")
    return {k: v for k, v in os.environ.items() if k not in drop}


class CephRGW:
    """A one-host Ceph cluster + RADOS Gateway whose state lives under `root`.

    `start()` waits until the gateway answers and the user exists (bounded by `timeout_s`), and
    cleans up on failure; `stop()` kills every daemon of this directory (also ones left by an
    earlier process, found by their pid files).
    """

    def __init__(
        self,
        root: "str | os.PathLike",
        *,
        access_key: str = "open-flamingo-test",
        secret_key: str = "open-flamingo-test-secret",
        timeout_s: float = 60.0,
    ):
        self.root = Path(root).resolve()
        self.conf = self.root / "ceph.conf"
        self._access_key, self._secret_key = access_key, secret_key
        self.timeout_s = timeout_s
        self.port: int | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._env = _ceph_env()

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise CephRGWError("the cluster is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 / the AWS CLI at this gateway."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def __enter__(self) -> "CephRGW":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the whole cluster ---------------------------------------------------------------

    def start(self) -> None:
        """Create and start mon, osd and gateway, and the S3 user."""
        missing = missing_binaries()
        if missing:
            raise CephRGWError(
                f"Ceph is not installed (missing {', '.join(missing)}): "
                "run `bash scripts/ci/install_services.sh`"
            )
        self.stop()  # leftovers of an earlier run in this directory
        for sub in ("mon", "osd", "run", "log", "pids", "rgw"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
            (self.root / sub).mkdir(parents=True)
        deadline = time.monotonic() + self.timeout_s
        try:
            self._write_conf(fsid := str(uuid.uuid4()))
            osd_id, osd_uuid = self._start_mon(fsid, deadline)
            (self.root / "osd" / osd_id).mkdir()
            osd_mkfs = ["ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid]
            self._run("osd-mkfs", osd_mkfs, deadline)
            self._spawn(OSD, ["ceph-osd", "-i", osd_id])
            user = ["radosgw-admin", "user", "create", "--uid=test", "--display-name=test"]
            user += [f"--access-key={self.access_key}", f"--secret-key={self.secret_key}"]
            # Blocks until the osd has activated the pools' placement groups.
            self._run("user-create", user, deadline, watch=(MON, OSD))
            self._start_gateway(deadline)
        except BaseException:
            self.stop()
            raise

    def _start_mon(self, fsid: str, deadline: float) -> tuple[str, str]:
        """Create and start the mon, register the osd and create the rgw pools.
        Returns the osd's id and uuid."""
        monmap = str(self.root / "monmap")
        mon_addr = f"[v2:127.0.0.1:{self._mon_port}]"
        create = ["monmaptool", "--create", "--clobber", "--fsid", fsid, "--addv", "a", mon_addr]
        self._run("monmap", [*create, monmap], deadline)
        self._run("mon-mkfs", ["ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap], deadline)
        self._spawn(MON, ["ceph-mon", "-i", "a"])
        osd_uuid = str(uuid.uuid4())
        timeout = str(max(1, int(deadline - time.monotonic())))
        bootstrap = [SYSTEM_PYTHON, "-c", _BOOTSTRAP, str(self.conf), timeout, osd_uuid, *RGW_POOLS]
        out = self._run("bootstrap", bootstrap, deadline, watch=(MON,))
        return out.strip().splitlines()[-1], osd_uuid

    def stop(self) -> None:
        """Kill every daemon of this directory and wait until they are gone."""
        with self._lock:
            recorded = {path.name for path in (self.root / "pids").glob("*")}
            for name in sorted(recorded | set(self._procs)):
                self._kill(name)

    # --- the gateway alone (outages) -------------------------------------------------------

    def stop_gateway(self) -> None:
        """Kill radosgw only: S3 requests fail with connection errors until start_gateway()."""
        with self._lock:
            self._kill(GATEWAY)

    def start_gateway(self) -> None:
        """Start radosgw again on the same port and wait until it answers."""
        self._start_gateway(time.monotonic() + self.timeout_s)

    def _start_gateway(self, deadline: float) -> None:
        with self._lock:
            running = self._procs.get(GATEWAY)
            if running is not None and running.poll() is None:
                raise CephRGWError("the gateway is already running")
            self._kill(GATEWAY)
            try:
                self._spawn(GATEWAY, ["radosgw", "-n", GATEWAY])
                self._wait_http(deadline)
            except BaseException:
                self._kill(GATEWAY)
                raise

    # --- helpers ---------------------------------------------------------------------------

    def _write_conf(self, fsid: str) -> None:
        base = free_port_block(PORT_BLOCK, CephRGWError)
        self._mon_port, self.port = base, base + 1
        root = self.root
        settings = {
            "fsid": fsid,
            "mon_host": f"[v2:127.0.0.1:{self._mon_port}]",
            "mon_initial_members": "a",
            "public_addr": "127.0.0.1",
            "cluster_addr": "127.0.0.1",
            "ms_bind_msgr1": "false",
            "ms_bind_port_min": base + 2,
            "ms_bind_port_max": base + PORT_BLOCK - 1,
            # Without crc, radosgw loops on "get_initial_auth_request returned -13".
            "ms_mon_client_mode": "crc",
            "auth_cluster_required": "none",
            "auth_service_required": "none",
            "auth_client_required": "none",
            "paxos_propose_interval": 0.05,  # the default 1 s makes start-up ~4x slower
            "mon_allow_pool_size_one": "true",
            "mon_max_pg_per_osd": 1000,
            "mon_warn_on_pool_no_redundancy": "false",
            "osd_pool_default_size": 1,
            "osd_pool_default_min_size": 1,
            "osd_pool_default_pg_num": 8,
            "osd_pool_default_pgp_num": 8,
            "osd_pool_default_pg_autoscale_mode": "off",
            "osd_crush_chooseleaf_type": 0,
            "osd_objectstore": "memstore",
            "run_dir": root / "run",
            "pid_file": root / "run/$name.pid",
            "admin_socket": root / "run/$name.$pid.asok",
            "log_file": root / "log/$name.log",
            "mon_data": root / "mon/$id",
            "osd_data": root / "osd/$id",
            "keyring": root / "keyring",  # never written: auth is off
        }
        lines = ["[global]", *(f"{k} = {v}" for k, v in settings.items())]
        lines += [
            "[client]",
            # Clients waiting for the osd learn of new osd maps on this tick (default 5 s).
            "objecter_tick_interval = 0.1",
            "[osd]",
            # A killed gateway's watches expire after this (default 30 s); until then, bucket
            # changes wait for its acknowledgement. Live clients ping on every objecter tick.
            "osd_client_watch_timeout = 2",
            f"[{GATEWAY}]",
            f"rgw_frontends = beast endpoint=127.0.0.1:{self.port}",
            f"rgw_data = {root / 'rgw'}",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str]) -> None:
        """Start a daemon in the foreground of a new session and record its pid."""
        with open(self.root / "log" / f"{name}.out", "ab") as out:
            proc = subprocess.Popen(
                [*argv, "-f", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self.root,
                start_new_session=True,  # outlives a CLI `start`; no terminal signals
            )
        self._procs[name] = proc
        (self.root / "pids" / name).write_text(f"{proc.pid}\n")

    def _check_alive(self, names: tuple[str, ...]) -> None:
        for name in names:
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise CephRGWError(
                    f"{name} exited with status {proc.returncode}\n"
                    + tail(self.root / "log" / f"{name}.log")
                    + "\n"
                    + tail(self.root / "log" / f"{name}.out")
                )

    def _run(self, step: str, argv: list[str], deadline: float, watch: tuple[str, ...] = ()) -> str:
        """Run a Ceph tool to completion before `deadline`, failing early if a watched daemon
        dies. Returns its stdout; its stderr goes to log/<step>.out."""
        if argv[0] != SYSTEM_PYTHON:
            argv = [argv[0], "-c", str(self.conf), *argv[1:]]
        log = self.root / "log" / f"{step}.out"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=err, env=self._env, cwd=self.root, text=True
            )
            try:
                while True:
                    try:
                        stdout, _ = proc.communicate(timeout=0.05)
                        break
                    except subprocess.TimeoutExpired:
                        self._check_alive(watch)
                        if time.monotonic() > deadline:
                            raise CephRGWError(
                                f"{step} ({argv[0]}) did not finish within {self.timeout_s} s\n"
                                + "\n".join(tail(self.root / "log" / f"{n}.log") for n in watch)
                            ) from None
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if proc.returncode != 0:
            raise CephRGWError(
                f"{step} ({argv[0]}) failed with status {proc.returncode}\n" + tail(log)
            )
        return stdout

    def _wait_http(self, deadline: float) -> None:
        """Poll the gateway until it answers an HTTP request."""
        while True:
            self._check_alive((GATEWAY,))
            try:
                with urllib.request.urlopen(self.endpoint_url, timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer means the frontend is up
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise CephRGWError(
                    f"the gateway did not answer on {self.endpoint_url} within {self.timeout_s} s\n"
                    + tail(self.root / "log" / f"{GATEWAY}.log")
                )
            time.sleep(0.05)

    def _kill(self, name: str) -> None:
        """SIGKILL one daemon and wait until it is gone. Daemons started by another process
        are found by their pid file, and killed only if their command line names our conf."""
        pid_file = self.root / "pids" / name
        proc = self._procs.pop(name, None)
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        elif pid_file.exists():
            pid = int(pid_file.read_text())
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                cmdline = []  # already gone
            if str(self.conf).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while is_running(pid):
                    if time.monotonic() > deadline:
                        raise CephRGWError(f"{name} (pid {pid}) survived SIGKILL")
                    time.sleep(0.02)
        pid_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--dir", required=True, help="the cluster's directory (created)")
    parser.add_argument("--access-key", default="open-flamingo-test")
    parser.add_argument("--secret-key", default="open-flamingo-test-secret")
    args = parser.parse_args(argv)
    cluster = CephRGW(args.dir, access_key=args.access_key, secret_key=args.secret_key)
    if args.command == "stop":
        cluster.stop()
        print(f"stopped the Ceph daemons of {cluster.root}")
        return
    started = time.monotonic()
    cluster.start()
    print(f"# Ceph RGW up in {time.monotonic() - started:.1f} s; logs in {cluster.root / 'log'}")
    for name, value in cluster.env().items():
        print(f"export {name}={value}")


if __name__ == "__main__":
    main()
