"""Which driver serves a configured site: one factory per ``settings.type``.

A new kind of site (``aws``, ``openstack-ssh``) adds its settings model to
``migratio.config`` and one entry to ``DRIVERS``; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable

from migratio import config
from migratio.drivers.base import Site
from migratio.errors import ConfigError

SiteFactory = Callable[[config.Site], Site]


def _openstack(site: config.Site) -> Site:
    # Imported here: openstacksdk is slow to import and only OpenStack sites need it.
    from migratio.drivers.openstack.driver import OpenStackSiteDriver

    if not isinstance(site.settings, config.OpenStackSite):
        raise ConfigError(site.id, "type", "is not an OpenStack site")
    return OpenStackSiteDriver(site.id, site.settings)


def _openstack_ssh(site: config.Site) -> Site:
    from migratio.drivers.ssh.driver import OpenStackSshSiteDriver

    if not isinstance(site.settings, config.OpenStackSshSite):
        raise ConfigError(site.id, "type", "is not an OpenStack-over-SSH site")
    return OpenStackSshSiteDriver(site.id, site.settings)


def _aws(site: config.Site) -> Site:
    # Imported here: boto3 is slow to import and only AWS sites need it.
    from migratio.drivers.aws.driver import AwsSiteDriver, check_region

    if not isinstance(site.settings, config.AwsSite):
        raise ConfigError(site.id, "type", "is not an AWS site")
    check_region(site.id, site.settings)
    return AwsSiteDriver(site.id, site.settings)


DRIVERS: dict[str, SiteFactory] = {
    "openstack": _openstack,
    "openstack-ssh": _openstack_ssh,
    "aws": _aws,
}


def open_site(site: config.Site) -> Site:
    """The driver for a site; it connects lazily, on first use."""
    try:
        factory = DRIVERS[site.settings.type]
    except KeyError:
        known = ", ".join(sorted(DRIVERS))
        raise ConfigError(
            site.id, "type", f"no driver for {site.settings.type!r} (known: {known})"
        ) from None
    return factory(site)
