"""The whole bed: two clouds (each a Keystone and a Glance), Redis, moto, sshd,
and the files clients read."""

import fcntl
import json
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from . import clients, glance, keystone, moto_server, pidfile, processes, redis_server, sshd
from .packages import ensure_packages
from .ports import free_ports
from .postgres import stop_postgres

SITES = ("site-a", "site-b")
BED_FILE = "bed.json"
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Bed:
    """A running bed, as clients see it.

    ``env`` holds the same variables as DIR/env. No passwords here: they live
    only in DIR/clouds.yaml (migratio's member accounts), DIR/admin-clouds.yaml
    (each cloud operator's admin) and the services' config files (all mode 0600).
    ``keystone_url`` is site-a's Keystone (as before the sites had one each);
    ``keystone_urls`` has every site's. ``reused`` is true when ``up`` found the
    bed already running.
    """

    dir: Path
    env: dict[str, str]
    config_path: Path
    clouds_yaml: Path
    keystone_url: str
    glance_urls: dict[str, str]
    logs_dir: Path
    work_dir: Path
    sites_dir: Path
    redis_url: str = ""
    moto_url: str = ""
    keystone_urls: dict[str, str] = field(default_factory=dict)
    reused: bool = field(default=False, compare=False)


def up(directory: Path, timeout: float = READY_TIMEOUT) -> Bed:
    """Build and start a bed in ``directory``; return when every service answers.

    If the directory already holds a running bed it is returned as is. A bed
    that is partly dead is stopped and rebuilt from scratch (DIR/work is kept).
    On failure everything started so far is stopped again.
    """
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        running = _running(directory)
        if running is not None:
            return running
        _stop_servers(directory)
        ensure_packages()
        try:
            return _build(directory, timeout)
        except BaseException:
            _stop_servers(directory)
            raise


def down(directory: Path) -> None:
    """Stop every server ``up`` recorded in ``directory`` (and its PostgreSQL, if any)."""
    directory = directory.resolve()
    if not directory.is_dir():
        return
    with _locked(directory):
        _stop_servers(directory)
        stop_postgres(directory)


def status(directory: Path) -> dict[str, bool]:
    """Each recorded server's name (Keystones first) and whether it is running."""
    servers = sorted(
        pidfile.load(directory.resolve()),
        key=lambda s: (not s.name.startswith("keystone"), s.name),
    )
    return {s.name: processes.is_running(s) for s in servers}


def load(directory: Path) -> Bed | None:
    """The bed recorded in ``directory``, running or not; None if there is none."""
    try:
        record = json.loads((directory.resolve() / BED_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return Bed(
        dir=Path(record["dir"]),
        env=dict(record["env"]),
        config_path=Path(record["config_path"]),
        clouds_yaml=Path(record["clouds_yaml"]),
        keystone_url=record["keystone_url"],
        glance_urls=dict(record["glance_urls"]),
        logs_dir=Path(record["logs_dir"]),
        work_dir=Path(record["work_dir"]),
        sites_dir=Path(record["sites_dir"]),
        redis_url=record.get("redis_url", ""),
        moto_url=record.get("moto_url", ""),
        keystone_urls=dict(record.get("keystone_urls", {})),
    )


def _build(directory: Path, timeout: float) -> Bed:
    (directory / BED_FILE).unlink(missing_ok=True)
    logs = directory / "logs"
    # "keystone": the one Keystone of beds made before each site had its own.
    kinds = ("keystone", "glance")
    stale_dirs = ("sshd", "keystone", *(f"{kind}-{s}" for s in SITES for kind in kinds))
    for stale in (logs, *(directory / name for name in stale_dirs)):
        shutil.rmtree(stale, ignore_errors=True)
    logs.mkdir()
    mark = str(directory)
    passwords = {site: keystone.Passwords.new() for site in SITES}

    redis_port, ssh_port, moto_port, *site_ports = free_ports(3 + 2 * len(SITES))
    moto = moto_server.MotoLayout(directory / "moto", logs, moto_port)
    ssh = sshd.SshdLayout(directory / "sshd", logs, ssh_port)
    redis = redis_server.RedisLayout(directory / "redis", logs, redis_port)
    identities = [
        keystone.KeystoneLayout(site, directory / f"keystone-{site}", logs, port)
        for site, port in zip(SITES, site_ports[: len(SITES)], strict=True)
    ]
    sites = [
        glance.GlanceLayout(site, directory / f"glance-{site}", logs, port)
        for site, port in zip(SITES, site_ports[len(SITES) :], strict=True)
    ]
    keystone_urls = {ks.site: ks.url for ks in identities}
    glance_urls = {g.site: g.url for g in sites}

    def start_keystone(ks: keystone.KeystoneLayout) -> None:
        keystone.configure(ks)
        if keystone.restore(ks, passwords[ks.site], glance_urls[ks.site]):
            server = keystone.start(ks, mark)
            pidfile.record(directory, server)
            processes.wait_http(server, ks.url, timeout)
            return
        # The first bed of a Keystone version: uwsgi loads Keystone (~2-4 s)
        # while its database is created and bootstrapped (loading touches no
        # table, and nothing asks it anything before wait_http below).
        server = keystone.start(ks, mark)
        pidfile.record(directory, server)
        keystone.setup(ks, passwords[ks.site].admin)
        processes.wait_http(server, ks.url, timeout)
        keystone.provision(ks, passwords[ks.site], glance_urls[ks.site])

    def start_glance(site: glance.GlanceLayout) -> None:
        glance.configure(site, keystone_urls[site.site], passwords[site.site].glance)
        glance.setup(site)
        server = glance.start(site, mark)
        pidfile.record(directory, server)
        processes.wait_http(server, f"{site.url}/healthcheck", timeout)

    def start_sshd() -> None:
        sshd.configure(ssh, directory / "clouds.yaml")
        pidfile.record(directory, sshd.start(ssh, mark))

    def start_redis() -> None:
        pidfile.record(directory, redis_server.start_redis(redis, mark))

    def start_moto() -> None:
        pidfile.record(directory, moto_server.start_moto(moto, mark))

    # The Keystones (bootstrap, then provisioning) are the long pole; they start
    # side by side, and the Glance sites, Redis and sshd meanwhile.
    _run_parallel(
        [
            *(partial(start_keystone, ks) for ks in identities),
            start_redis,
            start_sshd,
            start_moto,
            *(partial(start_glance, site) for site in sites),
        ]
    )

    def check_site(ks: keystone.KeystoneLayout, site: glance.GlanceLayout) -> None:
        glance.check_token(site, keystone.issue_token(ks, passwords[ks.site].migratio))

    _run_parallel([partial(check_site, ks, g) for ks, g in zip(identities, sites, strict=True)])

    written = clients.write_client_files(
        directory,
        keystone_urls=keystone_urls,
        glance_urls=glance_urls,
        accounts={
            site: clients.Account(
                keystone.MIGRATIO_USER, keystone.MIGRATIO_PROJECT, passwords[site].migratio
            )
            for site in SITES
        },
        admin_accounts={
            site: clients.Account(
                keystone.ADMIN_USER, keystone.ADMIN_PROJECT, passwords[site].admin
            )
            for site in SITES
        },
        redis_url=redis.url,
        extra_env=moto_server.write_aws_files(directory, directory / "sites", moto.url),
    )
    sshd.write_site_file(ssh, written.sites_dir)
    result = Bed(
        dir=directory,
        env=written.env,
        config_path=written.config_path,
        clouds_yaml=written.clouds_yaml,
        keystone_url=keystone_urls[SITES[0]],
        glance_urls=glance_urls,
        logs_dir=logs,
        work_dir=written.work_dir,
        sites_dir=written.sites_dir,
        redis_url=redis.url,
        moto_url=moto.url,
        keystone_urls=keystone_urls,
    )
    _save(result)
    return result


def _run_parallel(tasks: list[Callable[[], None]]) -> None:
    """Run ``tasks`` in threads; wait for all, then raise the first failure."""
    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        futures: list[Future[None]] = [pool.submit(task) for task in tasks]
    for future in futures:
        future.result()


def _running(directory: Path) -> Bed | None:
    servers = pidfile.load(directory)
    bed = load(directory)
    if bed is None or not servers or not all(processes.is_running(s) for s in servers):
        return None
    return replace(bed, reused=True)


def _stop_servers(directory: Path) -> None:
    processes.stop(pidfile.load(directory))
    pidfile.forget(directory)


def _save(bed: Bed) -> None:
    record = {
        "dir": str(bed.dir),
        "env": bed.env,
        "config_path": str(bed.config_path),
        "clouds_yaml": str(bed.clouds_yaml),
        "keystone_url": bed.keystone_url,
        "glance_urls": bed.glance_urls,
        "logs_dir": str(bed.logs_dir),
        "work_dir": str(bed.work_dir),
        "sites_dir": str(bed.sites_dir),
        "redis_url": bed.redis_url,
        "moto_url": bed.moto_url,
        "keystone_urls": bed.keystone_urls,
    }
    (bed.dir / BED_FILE).write_text(json.dumps(record, indent=2) + "\n")


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise ``up``/``down`` on one directory (e.g. pytest-xdist workers)."""
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
