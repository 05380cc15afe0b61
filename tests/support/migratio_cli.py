"""Run the real ``migratio`` command as operators do: a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from migratio.config import load_settings
from migratio.ledger.store import Ledger, Migration
from migratio.operations import open_ledger


def cli(
    config: Path,
    *args: str,
    check: bool = True,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "migratio", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    keep_output(config, args, result)
    if check and result.returncode != 0:
        raise AssertionError(
            f"migratio {' '.join(args)} exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    return result


def keep_output(
    config: Path, args: tuple[str, ...], result: subprocess.CompletedProcess[str]
) -> None:
    """Append what the command printed to ``migratio-cli.log`` beside its config:
    the secrets grep (R6) reads every log a test's migratio wrote."""
    log = config.parent / "migratio-cli.log"
    if not config.parent.is_dir():
        return
    with log.open("a", encoding="utf-8", errors="backslashreplace") as stream:
        stream.write(f"$ migratio {' '.join(args)[:200]} -> {result.returncode}\n")
        stream.write(result.stdout)
        stream.write(result.stderr)


def submit(config: Path, image_id: str, source: str = "site-a", dest: str = "site-b") -> str:
    return cli(config, "submit", "--image", image_id, "--from", source, "--to", dest).stdout.strip()


def run_until_idle(
    config: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return cli(config, "run", "--until-idle", timeout=timeout, env=env)


def start(
    config: Path, log: Path, *, until_idle: bool = False, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "migratio", "--config", str(config), "run"]
    if until_idle:
        args.append("--until-idle")
    with log.open("ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )


def show(config: Path, migration_id: str) -> dict[str, Any]:
    return dict(json.loads(cli(config, "show", "--json", migration_id).stdout))


def ledger_of(config: Path) -> Ledger:
    return open_ledger(load_settings(config))


def wait_for(
    ledger: Ledger, migration_id: str, *, state: str, min_bytes: int = 0, timeout: float = 120
) -> Migration:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        migration = ledger.get(migration_id)
        if migration.state == state and migration.bytes_done >= min_bytes:
            return migration
        time.sleep(0.05)
    raise TimeoutError(
        f"{migration_id} never reached {state} with {min_bytes} bytes: {ledger.get(migration_id)}"
    )


def start_and_wait(
    config: Path, migration_id: str, log: Path, *, state: str, min_bytes: int = 0
) -> tuple[subprocess.Popen[bytes], Ledger]:
    """Start a daemon and return once the migration is in ``state`` with
    ``min_bytes`` done (a place to interrupt it); the daemon keeps running."""
    ledger = ledger_of(config)
    process = start(config, log)
    try:
        wait_for(ledger, migration_id, state=state, min_bytes=min_bytes)
    except BaseException:
        process.kill()
        process.wait(30)
        raise
    return process, ledger
