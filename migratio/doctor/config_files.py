"""The daemon config and every site file, each its own check: a broken site file
is a failed line naming the file and the key, and the other sites are still checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from migratio import config
from migratio.doctor.result import CheckResult, Status
from migratio.errors import ConfigError


@dataclass(frozen=True)
class LoadedConfig:
    """The results of loading, and what loaded: the daemon config (None when it
    is broken: nothing else can be found then) and the sites whose file is valid."""

    results: list[CheckResult]
    daemon: config.DaemonConfig | None
    sites: list[config.Site] = field(default_factory=list)


def load(path: Path) -> LoadedConfig:
    try:
        daemon = config.load_daemon_config(path)
    except ConfigError as exc:
        return LoadedConfig([CheckResult("config", Status.FAIL, str(exc))], None)
    try:
        files = config.site_files(daemon.sites_dir)
    except ConfigError as exc:
        return LoadedConfig([CheckResult("config", Status.FAIL, str(exc))], daemon)
    summary = (
        f"{path}: daemon {daemon.name}, {len(files)} site file"
        f"{'' if len(files) == 1 else 's'} in {daemon.sites_dir}"
    )
    results = [
        CheckResult("config", Status.OK, summary)
        if files
        else CheckResult("config", Status.WARN, f"{summary}: no sites")
    ]
    sites: list[config.Site] = []
    for file in files:
        name = f"site {file.name.rsplit('.', 1)[0]}: site file"
        try:
            site = config.load_site(file)
        except ConfigError as exc:
            results.append(CheckResult(name, Status.FAIL, str(exc)))
            continue
        sites.append(site)
        results.append(CheckResult(name, Status.OK, f"{file}: {site.settings.type}"))
    return LoadedConfig(results, daemon, sites)
