"""Where the daemon's config is found, without loading it (the CLI's help needs only this)."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_ENV = "MIGRATIO_CONFIG"
DEFAULT_CONFIG_PATH = "/etc/migratio/migratio.yml"


def config_path(explicit: str | None) -> Path:
    """``--config`` wins, then ``$MIGRATIO_CONFIG``, then the system default."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
