"""A real OpenStack test bed on loopback for migratio's tests and developers.

Two independent clouds (``site-a``, ``site-b``), each a Keystone and a Glance
from Debian's packages, where migratio's accounts are plain project members;
Redis, moto and sshd beside them, plus an optional private PostgreSQL, all on
dynamic 127.0.0.1 ports with every byte of state inside one directory.
``support/testbed/testbed`` is the command-line shell over these functions.
"""

from .bed import Bed, down, load, status, up
from .errors import TestbedError
from .packages import TESTBED_PACKAGES, ensure_packages
from .postgres import start_postgres, stop_postgres
from .services import set_token_expiration, start_service, stop_service

__all__ = [
    "TESTBED_PACKAGES",
    "Bed",
    "TestbedError",
    "down",
    "ensure_packages",
    "load",
    "set_token_expiration",
    "start_postgres",
    "start_service",
    "status",
    "stop_postgres",
    "stop_service",
    "up",
]
