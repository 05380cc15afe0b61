"""The files a client of the bed reads: clouds.yaml, migratio.yml, sites/, env."""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import files

# Written into migratio.yml as the daemon's own settings for tests.
DAEMON_SETTINGS = {
    "concurrency": 2,
    "lease_seconds": 15,
    "namespace": "atmosphere",
}


@dataclass(frozen=True)
class ClientFiles:
    """Paths of the written files and the environment that points at them."""

    env: dict[str, str]
    config_path: Path
    clouds_yaml: Path
    work_dir: Path
    sites_dir: Path


def write_client_files(
    directory: Path,
    *,
    keystone_url: str,
    glance_urls: Mapping[str, str],
    admin_user: str,
    admin_project: str,
    admin_password: str,
    redis_url: str,
    extra_env: Mapping[str, str] | None = None,
) -> ClientFiles:
    """Write every client-facing file for a bed whose services are up."""
    clouds_yaml = directory / "clouds.yaml"
    clouds = {
        site: {
            "auth": {
                "auth_url": keystone_url,
                "username": admin_user,
                "password": admin_password,
                "project_name": admin_project,
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
            "auth_type": "password",
            "region_name": site,
            "identity_api_version": 3,
            "interface": "public",
        }
        for site in glance_urls
    }
    files.write_yaml(clouds_yaml, {"clouds": clouds}, private=True)

    work_dir = directory / "work"
    work_dir.mkdir(exist_ok=True)
    sites_dir = directory / "sites"
    sites_dir.mkdir(exist_ok=True)
    config_path = directory / "migratio.yml"
    first_site = next(iter(glance_urls))
    files.write_yaml(
        config_path,
        {
            "name": first_site,
            "work_dir": str(work_dir),
            "sites_dir": str(sites_dir),
            "redis_url": redis_url,
            **DAEMON_SETTINGS,
        },
    )
    for site in glance_urls:
        files.write_yaml(sites_dir / f"{site}.yml", {"type": "openstack", "cloud": site})
    # A destination that only takes raw images, to exercise conversion.
    raw_site = list(glance_urls)[-1]
    files.write_yaml(
        sites_dir / f"{raw_site}-raw.yml",
        {"type": "openstack", "cloud": raw_site, "disk_format": "raw"},
    )

    env = {
        "MIGRATIO_CONFIG": str(config_path),
        "OS_CLIENT_CONFIG_FILE": str(clouds_yaml),
        "MIGRATIO_TESTBED_DIR": str(directory),
        "MIGRATIO_KEYSTONE_URL": keystone_url,
        "MIGRATIO_REDIS_URL": redis_url,
        **(extra_env or {}),
    }
    for site, url in glance_urls.items():
        env[f"MIGRATIO_GLANCE_{site.upper().replace('-', '_')}_URL"] = url
    files.write_env(directory / "env", env)
    return ClientFiles(
        env=env,
        config_path=config_path,
        clouds_yaml=clouds_yaml,
        work_dir=work_dir,
        sites_dir=sites_dir,
    )
