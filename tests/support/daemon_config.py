"""Daemon configs for tests: the bed's sites, a test's own work dir, fast timings."""

from __future__ import annotations

import os
from pathlib import Path

import yaml


def write_daemon_config(directory: Path, sites_dir: Path, **overrides: object) -> Path:
    settings: dict[str, object] = {
        "name": "site-a",
        "work_dir": str(directory / "work"),
        "sites_dir": str(sites_dir),
        "concurrency": 2,
        "lease_seconds": 6,
        "poll_seconds": 0.2,
        "progress_seconds": 0.1,
        "retry": {"max_attempts": 3, "base_delay": 0.2, "max_delay": 1.0},
        # Every daemon of the tests logs at DEBUG: the secrets grep (R6) at the end
        # of the session reads those logs, and DEBUG is where secrets would slip.
        "log_level": "DEBUG",
    }
    if bed_redis := os.environ.get("MIGRATIO_REDIS_URL"):
        # The bed's private Redis: a test daemon never touches the machine's.
        settings["redis_url"] = bed_redis
    settings.update(overrides)
    path = directory / "migratio.yml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path
