"""The files a client of the bed reads: clouds.yaml, migratio.yml, sites/, env.

clouds.yaml holds migratio's accounts (plain project members); the operators'
admin accounts are in admin-clouds.yaml, which nothing of migratio's reads:
tests that act as a cloud's operator open it themselves.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import files

ADMIN_CLOUDS = "admin-clouds.yaml"

# Written into migratio.yml as the daemon's own settings for tests.
DAEMON_SETTINGS = {
    "concurrency": 2,
    "lease_seconds": 15,
    "namespace": "atmosphere",
}


@dataclass(frozen=True)
class Account:
    """A user and the project its tokens are scoped to, in the Default domain."""

    user: str
    project: str
    password: str


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
    keystone_urls: Mapping[str, str],
    glance_urls: Mapping[str, str],
    accounts: Mapping[str, Account],
    admin_accounts: Mapping[str, Account],
    redis_url: str,
    extra_env: Mapping[str, str] | None = None,
) -> ClientFiles:
    """Write every client-facing file for a bed whose services are up."""
    clouds_yaml = directory / "clouds.yaml"
    clouds = {site: _cloud(keystone_urls[site], site, accounts[site]) for site in glance_urls}
    files.write_yaml(clouds_yaml, {"clouds": clouds}, private=True)
    admin_clouds_yaml = directory / ADMIN_CLOUDS
    admin_clouds = {
        site: _cloud(keystone_urls[site], site, admin_accounts[site]) for site in glance_urls
    }
    files.write_yaml(admin_clouds_yaml, {"clouds": admin_clouds}, private=True)

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
        # site-a's, as when one Keystone served both sites; each site's below.
        "MIGRATIO_KEYSTONE_URL": keystone_urls[first_site],
        "MIGRATIO_REDIS_URL": redis_url,
        "MIGRATIO_TESTBED_ADMIN_CLOUDS": str(admin_clouds_yaml),
        **(extra_env or {}),
    }
    for site, url in glance_urls.items():
        env[f"MIGRATIO_GLANCE_{_variable(site)}_URL"] = url
    for site, url in keystone_urls.items():
        env[f"MIGRATIO_KEYSTONE_{_variable(site)}_URL"] = url
    files.write_env(directory / "env", env)
    return ClientFiles(
        env=env,
        config_path=config_path,
        clouds_yaml=clouds_yaml,
        work_dir=work_dir,
        sites_dir=sites_dir,
    )


def _cloud(keystone_url: str, region: str, account: Account) -> dict[str, object]:
    """A clouds.yaml entry: password auth, scoped to the account's project."""
    return {
        "auth": {
            "auth_url": keystone_url,
            "username": account.user,
            "password": account.password,
            "project_name": account.project,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "auth_type": "password",
        "region_name": region,
        "identity_api_version": 3,
        "interface": "public",
    }


def _variable(site: str) -> str:
    return site.upper().replace("-", "_")
