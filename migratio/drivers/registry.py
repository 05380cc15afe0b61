"""Which driver serves a configured site: one factory per ``settings.type``.

A new kind of site (``aws``, ``openstack-ssh``) adds its settings model to
``migratio.config`` (saying whether it can be a source) and one entry to
``DRIVERS``; nothing else changes. A site is opened for a role: as a source or
as a destination, and a site that cannot play the role is refused by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

from migratio import config
from migratio.drivers.base import DestinationDriver, SourceDriver
from migratio.errors import ConfigError


def _openstack(site: config.Site) -> Any:
    # Imported here: openstacksdk is slow to import and only OpenStack sites need it.
    from migratio.drivers.openstack.driver import OpenStackSiteDriver

    assert isinstance(site.settings, config.OpenStackSite)
    return OpenStackSiteDriver(site.id, site.settings)


def _openstack_ssh(site: config.Site) -> Any:
    from migratio.drivers.ssh.driver import OpenStackSshSiteDriver

    assert isinstance(site.settings, config.OpenStackSshSite)
    return OpenStackSshSiteDriver(site.id, site.settings)


def _aws(site: config.Site) -> Any:
    # Imported here: boto3 is slow to import and only AWS sites need it.
    from migratio.drivers.aws.driver import AwsSiteDriver, check_region

    assert isinstance(site.settings, config.AwsSite)
    check_region(site.id, site.settings)
    return AwsSiteDriver(site.id, site.settings)


DRIVERS: dict[str, Callable[[config.Site], Any]] = {
    "openstack": _openstack,
    "openstack-ssh": _openstack_ssh,
    "aws": _aws,
}


class SiteOpener(Protocol):
    """Opens a configured site's driver for one role (the supervisor's seam:
    tests pass the stub driver's opener)."""

    def source(self, site: config.Site) -> SourceDriver: ...

    def destination(self, site: config.Site) -> DestinationDriver: ...


class Drivers:
    """The real drivers, by site type."""

    def source(self, site: config.Site) -> SourceDriver:
        config.check_source(site)
        return cast(SourceDriver, _open(site))

    def destination(self, site: config.Site) -> DestinationDriver:
        return cast(DestinationDriver, _open(site))


def open_source(site: config.Site) -> SourceDriver:
    """The driver of a site to read images from; it connects lazily, on first use."""
    return Drivers().source(site)


def open_destination(site: config.Site) -> DestinationDriver:
    """The driver of a site to write images to; it connects lazily, on first use."""
    return Drivers().destination(site)


def _open(site: config.Site) -> Any:
    try:
        factory = DRIVERS[site.settings.type]
    except KeyError:
        known = ", ".join(sorted(DRIVERS))
        raise ConfigError(
            site.id, "type", f"no driver for {site.settings.type!r} (known: {known})"
        ) from None
    return factory(site)
