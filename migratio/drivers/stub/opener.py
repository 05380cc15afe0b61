"""The site opener that hands the supervisor stub sites instead of real drivers."""

from __future__ import annotations

from migratio import config
from migratio.drivers.base import DestinationDriver, SourceDriver
from migratio.drivers.stub.scripting import Scriptable
from migratio.drivers.stub.site import StubSite
from migratio.errors import ConfigError


class StubSites(Scriptable):
    """Implements ``migratio.drivers.registry.SiteOpener`` over stub sites, by site id.

    The configured site decides the role it may play (``config.check_source``, as
    for real drivers: an AWS-typed site is refused as a source); the stub decides
    how it behaves. Opening a site can be scripted to fail (methods ``source`` and
    ``destination``); ``opened`` lists (role, site id) of every open.
    """

    def __init__(self, *sites: StubSite) -> None:
        super().__init__()
        self.sites = {site.site_id: site for site in sites}
        self.opened: list[tuple[str, str]] = []

    def source(self, site: config.Site) -> SourceDriver:
        self._enter("source")
        config.check_source(site)
        return self._open("source", site)

    def destination(self, site: config.Site) -> DestinationDriver:
        self._enter("destination")
        return self._open("destination", site)

    def _open(self, role: str, site: config.Site) -> StubSite:
        try:
            stub = self.sites[site.id]
        except KeyError:
            raise ConfigError(site.id, "type", "no stub site with this id") from None
        self.opened.append((role, site.id))
        return stub
