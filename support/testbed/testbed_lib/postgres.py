"""A private PostgreSQL 15 cluster per directory, so tests never touch the machine's server.

initdb and postgres refuse to run as root, so the cluster belongs to the
``postgres`` OS user, which must be able to reach the cluster's path. pytest's
tmp dirs sit under a root-only 0700 directory; when DIR is out of reach, the
cluster goes to a private directory under /tmp instead, linked as DIR/postgres
and removed again by ``stop_postgres``.
"""

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import TestbedError
from .packages import ensure_packages
from .ports import free_ports
from .processes import run, system_env

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
DATABASE = "migratio"
RECORD_FILE = "postgres.json"


@dataclass(frozen=True)
class Cluster:
    """Where a cluster lives and listens; recorded in DIR/postgres.json.

    ``temporary`` marks a cluster outside DIR (see the module docstring), which
    ``stop_postgres`` deletes.
    """

    path: Path
    port: int
    temporary: bool

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def sockets(self) -> Path:
        return self.path / "run"

    @property
    def log(self) -> Path:
        return self.path / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{OS_USER}@127.0.0.1:{self.port}/{DATABASE}"


def start_postgres(directory: Path, timeout: float = 60.0) -> str:
    """Start the directory's cluster (creating it if needed); return a SQLAlchemy URL.

    The URL points at database ``migratio``, user ``postgres``, trust auth on
    127.0.0.1. If the cluster already runs, its URL is returned unchanged.
    """
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    existing = _load(directory)
    if existing is not None and _postmaster_pid(existing) is not None:
        return existing.url
    ensure_packages(["postgresql"])
    setup_log = directory / "logs" / "postgres-setup.log"
    if existing is not None and (existing.data / "PG_VERSION").exists():
        # Stopped with keep=True: the same data on the same port, as a restart would.
        cluster = existing
    else:
        path = _cluster_path(directory)
        cluster = Cluster(
            path=path, port=free_ports(1)[0], temporary=path != directory / "postgres"
        )
    _save(directory, cluster)
    try:
        _start(cluster, setup_log, timeout)
    except BaseException:
        # Keep the server's own log where the error message points, then clean up.
        with contextlib.suppress(OSError), setup_log.open("a") as out:
            out.write(f"--- {cluster.log}\n{cluster.log.read_text()}")
        stop_postgres(directory)
        raise
    return cluster.url


def stop_postgres(directory: Path, timeout: float = 30.0, *, keep: bool = False) -> None:
    """Stop the directory's cluster (fast shutdown); tolerant of one already gone.

    ``keep``: only stop the server; ``start_postgres`` starts it again with its data
    on its port (an outage, not the end of the cluster).
    """
    directory = directory.resolve()
    cluster = _load(directory)
    if cluster is None:
        return
    pid = _postmaster_pid(cluster)
    if pid is not None:
        argv = [
            str(PG_BIN / "pg_ctl"), "stop",
            "--pgdata", str(cluster.data),
            "--mode", "fast", "--wait", "--timeout", str(int(timeout)),
        ]  # fmt: skip
        try:
            _as_postgres(argv, cluster, directory / "logs" / "postgres-setup.log", "pg_ctl stop")
        except TestbedError:
            _kill_postmaster(pid)
    if keep:
        return
    if cluster.temporary:
        shutil.rmtree(cluster.path, ignore_errors=True)
        link = directory / "postgres"
        if link.is_symlink():
            link.unlink()
    (directory / RECORD_FILE).unlink(missing_ok=True)


def _start(cluster: Cluster, setup_log: Path, timeout: float) -> None:
    if not (cluster.data / "PG_VERSION").exists():
        initdb = [
            str(PG_BIN / "initdb"),
            "--pgdata", str(cluster.data),
            "--auth", "trust",  # loopback only, throwaway data
            "--username", OS_USER,
            "--encoding", "UTF8",
            "--locale", "C.UTF-8",
            "--no-sync",
        ]  # fmt: skip
        _as_postgres(initdb, cluster, setup_log, "initdb")
        with (cluster.data / "postgresql.conf").open("a") as main_conf:
            main_conf.write("include 'testbed.conf'\n")
    cluster.sockets.mkdir(exist_ok=True)
    _chown(cluster.sockets)
    # Per-start settings (the port) go in their own file rather than through
    # `pg_ctl -o`, which hands its argument to a shell.
    settings = {
        "port": str(cluster.port),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{cluster.sockets}'",
        "fsync": "off",  # test data: speed over durability
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    conf = cluster.data / "testbed.conf"
    conf.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
    _chown(conf)
    pg_ctl = [
        str(PG_BIN / "pg_ctl"), "start",
        "--pgdata", str(cluster.data),
        "--log", str(cluster.log),
        "--wait", "--timeout", str(int(timeout)),
    ]  # fmt: skip
    _as_postgres(pg_ctl, cluster, setup_log, "pg_ctl start", timeout=timeout + 10)
    _create_database(cluster, setup_log)


def _cluster_path(directory: Path) -> Path:
    inside = directory / "postgres"
    if inside.is_symlink():
        target = inside.resolve()
        if target.is_dir():
            return target
        inside.unlink()
    if _reachable_by_postgres(directory):
        inside.mkdir(exist_ok=True)
        _chown(inside)
        return inside
    outside = Path(tempfile.mkdtemp(prefix="migratio-pg-"))
    _chown(outside)
    inside.symlink_to(outside)
    return outside


def _reachable_by_postgres(directory: Path) -> bool:
    result = subprocess.run(
        ["runuser", "-u", OS_USER, "--", "test", "-x", str(directory)],
        env=system_env(),
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def _create_database(cluster: Cluster, log: Path) -> None:
    client = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", OS_USER]
    databases = "select datname from pg_database"
    result = subprocess.run(
        [str(PG_BIN / "psql"), "-X", *client, "-d", "postgres", "-tAc", databases],
        env=system_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if DATABASE not in result.stdout.split():
        run([str(PG_BIN / "createdb"), *client, DATABASE], log, what="createdb")


def _as_postgres(
    argv: list[str], cluster: Cluster, log: Path, what: str, timeout: float = 120
) -> None:
    # The setup log is written by us (root); the postgres user writes only
    # inside the cluster directory. cwd: it cannot enter root's home.
    command = ["runuser", "-u", OS_USER, "--", *argv]
    run(command, log, what=what, cwd=cluster.path, timeout=timeout)


def _postmaster_pid(cluster: Cluster) -> int | None:
    try:
        pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
        command = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if command in ("postgres", "postmaster") else None


def _kill_postmaster(pid: int) -> None:
    # SIGQUIT is PostgreSQL's immediate shutdown; its children follow the postmaster.
    try:
        os.kill(pid, signal.SIGQUIT)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _chown(path: Path) -> None:
    user = pwd.getpwnam(OS_USER)
    os.chown(path, user.pw_uid, user.pw_gid)


def _save(directory: Path, cluster: Cluster) -> None:
    record = {"path": str(cluster.path), "port": cluster.port, "temporary": cluster.temporary}
    (directory / RECORD_FILE).write_text(json.dumps(record) + "\n")


def _load(directory: Path) -> Cluster | None:
    try:
        record = json.loads((directory / RECORD_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return Cluster(
        path=Path(record["path"]), port=int(record["port"]), temporary=bool(record["temporary"])
    )
