"""In-memory stub sites, shipped beside the real drivers as dramatiq ships its
StubBroker: the supervisor, the states and cleanup run against them in milliseconds.

Test only. The daemon never opens a stub (``migratio.drivers.registry.DRIVERS``
does not know one); a test passes ``StubSites`` to ``Supervisor(site_opener=...)``.
"""

from migratio.drivers.stub.holdings import StubImage, StubRecord
from migratio.drivers.stub.opener import StubSites
from migratio.drivers.stub.scripting import Scriptable
from migratio.drivers.stub.site import StubSite

__all__ = ["Scriptable", "StubImage", "StubRecord", "StubSite", "StubSites"]
