"""``migratio run`` as systemd runs it: notify protocol (READY, watchdog, STATUS,
STOPPING), reload on SIGHUP, the shipped unit and its companions checked by
systemd's own tools, and a journal free of secrets at DEBUG.

There is no service manager here: the tests bind the datagram socket systemd
would (``$NOTIFY_SOCKET``) and read what the daemon sends.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from migratio.systemd import Notifier
from tests.support import glance_peer, images, migratio_cli
from tests.support.daemon_config import write_daemon_config
from tests.support.redis_peer import PrivateRedis, sidekiq_job

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "support" / "init" / "migratio.service"
PRUNE_UNIT = UNIT.with_name("migratio-prune.service")
PRUNE_TIMER = UNIT.with_name("migratio-prune.timer")
STATUS_LINE = re.compile(r"^\d+ running, \d+ queued, \d+ failed in the last hour$")


class NotifySocket:
    """The service manager's end: an abstract datagram socket (no path length limit)."""

    def __init__(self) -> None:
        self.address = f"@migratio-test-{uuid.uuid4().hex}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.address[1:])
        self.received: list[tuple[float, dict[str, str]]] = []

    def close(self) -> None:
        self.socket.close()

    def wait_for(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float = 30
    ) -> dict[str, str]:
        """The first datagram from now on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.socket.settimeout(left)
            try:
                data = self.socket.recv(4096)
            except TimeoutError:
                break
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.received.append((time.monotonic(), fields))
            if predicate(fields):
                return fields
        raise TimeoutError(f"no such datagram; received: {[f for _, f in self.received]}")

    def collect(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            self.wait_for(lambda _fields: False, seconds)

    def times_of(self, key: str, value: str | None = None) -> list[float]:
        return [
            at
            for at, fields in self.received
            if key in fields and (value is None or fields[key] == value)
        ]


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    notify_socket = NotifySocket()
    yield notify_socket
    notify_socket.close()


def quiet_config(directory: Path, **overrides: object) -> Path:
    """A daemon of one site that is never contacted, without Redis: no peer needed."""
    sites = directory / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    (sites / "site-a.yml").write_text("type: openstack\ncloud: site-a\n")
    settings: dict[str, object] = {"intake": False, "feedback": False, **overrides}
    return write_daemon_config(directory, sites, **settings)


def start_daemon(
    config: Path, log: Path, notify: NotifySocket, *, watchdog_usec: int = 2_000_000, **env: str
) -> subprocess.Popen[bytes]:
    """``migratio run`` with systemd's variables; ``WATCHDOG_PID`` set to the daemon's
    own pid unless given (the shell's ``$$`` is the pid ``exec`` hands over)."""
    command = f'exec "{sys.executable}" -m migratio --config "{config}" run'
    if "WATCHDOG_PID" not in env:
        command = f"WATCHDOG_PID=$$ {command}"
    with log.open("ab") as out:
        return subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "NOTIFY_SOCKET": notify.address,
                "WATCHDOG_USEC": str(watchdog_usec),
                **env,
            },
        )


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise


def wait_for_log(log: Path, text: str, *, count: int = 1, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if content.count(text) >= count:
            return content
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} never appeared {count} time(s) in {log}")


# ---- the notify protocol ---------------------------------------------------------


def test_ready_watchdog_status_and_stopping(tmp_path: Path, notify: NotifySocket) -> None:
    config = quiet_config(tmp_path)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log, notify, watchdog_usec=2_000_000)
    try:
        ready = notify.wait_for(lambda fields: "READY" in fields)
        assert notify.received[0][1] is ready, "nothing is sent before READY"
        # READY comes after the ledger, the config and the sites are loaded and
        # the start-up sweep is done.
        assert (tmp_path / "work" / "ledger.sqlite").exists()
        assert "starting (concurrency 2)" in log.read_text()
        assert ready["READY"] == "1" and STATUS_LINE.match(ready["STATUS"]), ready
        notify.collect(6.5)
    finally:
        code = stop(daemon)
    notify.wait_for(lambda fields: "STOPPING" in fields, timeout=5)
    assert code == 0, log.read_text()[-2000:]

    pings = notify.times_of("WATCHDOG", "1")
    assert len(pings) >= 6, notify.received
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    # Due at half of WatchdogSec (1 s) and sent within three quarters (1.5 s); the
    # bounds leave room for a busy test machine reading late, never past WatchdogSec.
    assert all(0.5 <= gap <= 1.9 for gap in gaps), gaps
    assert sum(gaps) / len(gaps) == pytest.approx(1.1, abs=0.25), gaps
    statuses = [fields["STATUS"] for _, fields in notify.received if "STATUS" in fields]
    assert len(statuses) >= 2 and all(STATUS_LINE.match(status) for status in statuses)
    assert notify.received[-1][1] == {"STOPPING": "1"}


def test_no_watchdog_pings_for_another_process(tmp_path: Path, notify: NotifySocket) -> None:
    """``WATCHDOG_PID`` names a process other than the daemon: the watchdog is not ours."""
    config = quiet_config(tmp_path)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log, notify, watchdog_usec=400_000, WATCHDOG_PID="1")
    try:
        notify.wait_for(lambda fields: "READY" in fields)
        notify.collect(1.5)
    finally:
        assert stop(daemon) == 0
    assert notify.times_of("WATCHDOG") == []


def test_notifier_takes_systemd_variables_from_its_children() -> None:
    environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environment(environ)
    assert (notifier.address, notifier.watchdog_seconds) == ("@x", 30.0)
    assert environ == {}, "qemu-img and ssh must not inherit them"
    assert notifier.pause_limit(1.0) == 1.0 and notifier.pause_limit(60.0) == 7.5
    inert = Notifier.from_environment({})
    inert.ready(lambda: "x")  # no socket: nothing happens, nothing fails
    assert not inert.active and inert.pause_limit(5.0) == 5.0


# ---- reload ----------------------------------------------------------------------


def _reload(daemon: subprocess.Popen[bytes], notify: NotifySocket) -> None:
    daemon.send_signal(signal.SIGHUP)
    notify.wait_for(lambda fields: "RELOADING" in fields)
    ready = notify.wait_for(lambda fields: "READY" in fields)
    assert STATUS_LINE.match(ready["STATUS"]), ready


def test_sighup_reloads_sites_and_refuses_a_broken_file(
    tmp_path: Path, notify: NotifySocket
) -> None:
    config = quiet_config(tmp_path)
    sites = tmp_path / "sites"
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log, notify)
    try:
        notify.wait_for(lambda fields: "READY" in fields)
        (sites / "site-b.yml").write_text("type: openstack\ncloud: site-b\n")
        _reload(daemon, notify)
        wait_for_log(log, "reloaded")
        assert "sites site-a, site-b (added: site-b; removed: none)" in log.read_text()

        # A broken file among good changes: all refused, one line, the daemon goes on.
        (sites / "site-c.yml").write_text("type: openstack\ncloud: site-c\n")
        (sites / "broken.yml").write_text("type: [openstack\n")
        _reload(daemon, notify)
        content = wait_for_log(log, "reload refused")
        refused = [line for line in content.splitlines() if "broken.yml" in line]
        assert len(refused) == 1, content
        assert "reload refused, the running config stays" in refused[0]
        assert "line 2" in refused[0] and "Traceback" not in content
        assert daemon.poll() is None

        # Fixed: site-c arrives only now, so the refused reload kept the old sites;
        # a restart-only change is named, not applied.
        (sites / "broken.yml").unlink()
        settings = yaml.safe_load(config.read_text())
        config.write_text(yaml.safe_dump({**settings, "concurrency": 3}))
        _reload(daemon, notify)
        content = wait_for_log(log, "reloaded", count=2)
        assert "sites site-a, site-b, site-c (added: site-c; removed: none)" in content
        assert "changed concurrency: takes effect at the next restart" in content
    finally:
        code = stop(daemon)
    assert code == 0, log.read_text()[-2000:]
    assert notify.wait_for(lambda fields: "STOPPING" in fields, timeout=5) == {"STOPPING": "1"}


@pytest.mark.testbed
def test_a_site_added_by_reload_is_used_for_the_next_claim(
    testbed: Any, tmp_path: Path, notify: NotifySocket
) -> None:
    """The new site file is read on SIGHUP and the next migration to it runs there;
    the daemon logs JSON lines that carry the migration they are about."""
    sites = tmp_path / "sites"
    shutil.copytree(testbed.dir / "sites", sites)
    config = write_daemon_config(tmp_path, sites, intake=False, feedback=False, log_format="json")
    source = glance_peer.upload(
        glance_peer.connect("site-a"),
        images.random_qcow2(tmp_path / "small.qcow2", 4),
        name="reload-template",
    )
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log, notify)
    try:
        notify.wait_for(lambda fields: "READY" in fields)
        shutil.copy(sites / "site-b.yml", sites / "site-b-again.yml")
        _reload(daemon, notify)
        wait_for_log(log, "reloaded")
        migration_id = migratio_cli.submit(config, source, dest="site-b-again")
        ledger = migratio_cli.ledger_of(config)
        migratio_cli.wait_for(ledger, migration_id, state="done", timeout=120)
    finally:
        code = stop(daemon)
    assert code == 0

    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert all({"time", "level", "logger", "thread", "message"} <= set(r) for r in records)
    about = [record for record in records if record.get("migration") == migration_id]
    assert {record["dest_site"] for record in about} == {"site-b-again"}
    assert {"exporting", "uploading", "registering"} <= {record["state"] for record in about}


# ---- the unit and its companions, checked by systemd's tools ----------------------


def _systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (systemd's tools are needed to check the unit)")
    return path


@pytest.mark.parametrize("unit", [UNIT, PRUNE_UNIT, PRUNE_TIMER], ids=lambda path: path.name)
def test_shipped_units_pass_systemd_analyze_verify(unit: Path) -> None:
    tool = _systemd_tool("systemd-analyze")
    result = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # Other units on the machine may draw warnings; none may be about ours.
    about_ours = [
        line for line in (result.stdout + result.stderr).splitlines() if "migratio" in line
    ]
    assert result.returncode == 0 and about_ours == [], result.stdout + result.stderr


def test_the_prune_unit_runs_a_command_migratio_takes(tmp_path: Path) -> None:
    """Its ExecStart, run as the unit would (``sh -c``, migratio found on PATH) with
    the archive moved to a scratch dir: a prune that exits 0 and says what it did."""
    [line] = [x for x in PRUNE_UNIT.read_text().splitlines() if x.startswith("ExecStart=")]
    shell, flag, script = shlex.split(line.removeprefix("ExecStart="))
    assert (shell, flag) == ("/bin/sh", "-c") and not set("$%") & set(script), line
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "site-b.yml").write_text("type: openstack\ncloud: site-b\n")
    config = write_daemon_config(tmp_path, sites)
    subprocess.run(
        [sys.executable, "-m", "migratio", "--config", str(config), "db", "upgrade"], check=True
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "migratio").write_text(f'#!/bin/sh\nexec {sys.executable} -m migratio "$@"\n')
    (bin_dir / "migratio").chmod(0o755)
    archive = tmp_path / "pruned.jsonl"
    ran = subprocess.run(
        [shell, flag, script.replace("/var/lib/migratio/pruned.jsonl", str(archive))],
        env={
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "MIGRATIO_CONFIG": str(config),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert re.fullmatch(r"pruned 0 migrations ended before .*; kept 0 .*\n", ran.stdout), ran.stdout


@pytest.mark.parametrize("unit", [UNIT, PRUNE_UNIT], ids=lambda path: path.name)
def test_shipped_service_exposure_is_at_most_3(unit: Path) -> None:
    tool = _systemd_tool("systemd-analyze")
    result = subprocess.run(
        [tool, "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    exposure = rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)"
    match = re.search(exposure, result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= 3.0, result.stdout


def test_sysusers_and_tmpfiles_make_the_user_and_its_directories(tmp_path: Path) -> None:
    sysusers = _systemd_tool("systemd-sysusers")
    tmpfiles = _systemd_tool("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(
        [sysusers, f"--root={root}", str(UNIT.with_name("migratio.sysusers"))],
        check=True,
        capture_output=True,
        timeout=60,
    )
    user = next(
        line.split(":")
        for line in (root / "etc" / "passwd").read_text().splitlines()
        if line.startswith("migratio:")
    )
    assert user[5:] == ["/var/lib/migratio", "/usr/sbin/nologin"]
    uid, gid = int(user[2]), int(user[3])
    subprocess.run(
        [tmpfiles, f"--root={root}", "--create", str(UNIT.with_name("migratio.tmpfiles"))],
        check=True,
        capture_output=True,
        timeout=60,
    )
    expected = {
        "etc/migratio": (0o750, 0, gid),
        "etc/migratio/sites": (0o750, 0, gid),
        "var/lib/migratio": (0o750, uid, gid),
        "var/lib/migratio/ssh": (0o700, uid, gid),
    }
    for path, (mode, owner, group) in expected.items():
        stat = (root / path).stat()
        assert (stat.st_mode & 0o7777, stat.st_uid, stat.st_gid) == (mode, owner, group), path


# ---- no secret in the journal, even at DEBUG --------------------------------------

AWS_KEY_ID = "AKIA" + uuid.uuid4().hex[:16].upper()
AWS_SECRET = (uuid.uuid4().hex + uuid.uuid4().hex.upper())[:36] + "aB3/"


def _key_body_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and "-----" not in line]


@pytest.mark.testbed
def test_no_secret_in_debug_logs_of_real_migrations(testbed: Any, tmp_path: Path) -> None:
    """Migrations to Glance (through a Sidekiq job), AWS and SSH with every logger
    at DEBUG: keystone's password and tokens, the AWS keys, the Redis password and
    SSH private keys never reach the log."""
    redis_password = "redis-" + uuid.uuid4().hex
    redis_peer = PrivateRedis(tmp_path / "redis").start()
    try:
        redis_peer.client.config_set("requirepass", redis_password)
        redis_url = f"redis://:{redis_password}@127.0.0.1:{redis_peer.port}/0"
        aws = tmp_path / "aws"
        aws.mkdir()
        (aws / "credentials").write_text(
            f"[migratio-testbed]\naws_access_key_id = {AWS_KEY_ID}\n"
            f"aws_secret_access_key = {AWS_SECRET}\n"
        )
        config = write_daemon_config(
            tmp_path,
            testbed.dir / "sites",
            redis_url=redis_url,
            log_level="DEBUG",
            log_level_libraries="DEBUG",
        )
        source = glance_peer.upload(
            glance_peer.connect("site-a"),
            images.random_qcow2(tmp_path / "small.qcow2", 4),
            name="secrets-template",
        )
        env = {"AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials")}
        for dest in ("aws-a", "site-b-ssh"):
            migratio_cli.submit(config, source, dest=dest)
        pusher = redis.Redis.from_url(redis_url)
        pusher.lpush(
            "atmosphere:queue:migration_site-a",
            sidekiq_job([source, "site-b"], jid=uuid.uuid4().hex[:24]),
        )
        pusher.close()
        result = migratio_cli.run_until_idle(config, env=env, timeout=300)
    finally:
        redis_peer.stop()
    log = result.stdout + result.stderr
    (tmp_path / "daemon.log").write_text(log)
    migrations = json.loads(migratio_cli.cli(config, "status", "--json").stdout)
    assert sorted((m["dest_site"], m["state"]) for m in migrations) == [
        ("aws-a", "done"),
        ("site-b", "done"),
        ("site-b-ssh", "done"),
    ], migrations
    # The libraries did talk at DEBUG: there was something to leak.
    for logger in ("keystoneauth.session", "botocore.endpoint", "paramiko.transport", "urllib3"):
        assert f" {logger}" in log, logger
    assert f"redis://:***@127.0.0.1:{redis_peer.port}/0" in log

    clouds = yaml.safe_load((testbed.dir / "clouds.yaml").read_text())
    secrets = {
        "keystone password": clouds["clouds"]["site-a"]["auth"]["password"],
        "AWS access key id": AWS_KEY_ID,
        "AWS secret key": AWS_SECRET,
        "Redis password": redis_password,
    }
    for key_file in ("client_ed25519_key", "host_ed25519_key"):
        for number, line in enumerate(_key_body_lines(testbed.dir / "sshd" / key_file)):
            secrets[f"{key_file} line {number}"] = line
    leaked = [name for name, secret in secrets.items() if secret in log]
    assert leaked == []
    assert re.search(r"gAAAAA[A-Za-z0-9_=-]{20,}", log) is None, "a Keystone token leaked"
    assert re.search(r'"catalog":\s*\[', log) is None, "a service catalogue leaked"
    assert "X-Auth-Token: ***" in log
