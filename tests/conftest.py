"""Shared fixtures: the real test bed (two clouds, a Keystone and a Glance each),
PostgreSQL, daemon configs."""

from __future__ import annotations

import os
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "support" / "testbed"))

from migratio.ledger.database import upgrade  # noqa: E402
from migratio.ledger.store import Ledger  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.daemon_config import write_daemon_config  # noqa: E402
from tests.support.engine import EngineBed, open_engine_bed  # noqa: E402
from tests.support.freezing_proxy import FreezingProxy  # noqa: E402
from tests.support.ledgers import empty_ledger_engine  # noqa: E402

if TYPE_CHECKING:
    # The peers' libraries (openstacksdk above all) are imported where a fixture
    # needs a peer: tests/unit needs none, and importing them cost every run ~1 s.
    import testbed_lib
    from openstack.connection import Connection

    from tests.support import secrets_grep

# Property tests: a quick look in every run, a long one where support/chaos asks for it.
settings.register_profile("default", deadline=None, max_examples=100)
settings.register_profile("thorough", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[testbed_lib.Bed]:
    """One test bed per session; reused when MIGRATIO_TESTBED_DIR points at a running one."""
    import testbed_lib

    reuse = os.environ.get("MIGRATIO_TESTBED_DIR")
    directory = Path(reuse) if reuse else tmp_path_factory.mktemp("testbed")
    bed = testbed_lib.up(directory)
    saved = {key: os.environ.get(key) for key in bed.env}
    os.environ.update(bed.env)
    yield bed
    # Last, while the bed's Redis still answers: the secrets grep (R6).
    scan = grep_for_secrets(bed, tmp_path_factory.getbasetemp())
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if not reuse:
        testbed_lib.down(directory)
    from tests.support import secrets_grep

    assert not scan.hits, secrets_grep.summary(scan)


@pytest.fixture(scope="module")
def moto_url(testbed: testbed_lib.Bed) -> Iterator[str]:
    """The bed's moto server; what a test module made in it is removed after the module."""
    from tests.support import aws_peer  # boto3: only where AWS is tested

    url = str(testbed.env["MIGRATIO_MOTO_URL"])
    yield url
    aws_peer.reset(url)


def grep_for_secrets(bed: testbed_lib.Bed, basetemp: Path) -> secrets_grep.Scan:
    """Every secret of the bed and the tests, looked for in everything the run's
    daemons wrote; a token the session itself holds is one of them."""
    from tests.support import glance_peer, secrets_grep
    from tests.support.reliability import record

    started = time.monotonic()
    try:
        token = str(glance_peer.connect("site-a").auth_token)
    except Exception:  # Keystone left stopped by a failed test: the token shape still counts
        token = ""
    scan = secrets_grep.after_the_run(
        bed.dir,
        basetemp,
        redis_url=bed.redis_url,
        postgres_url=os.environ.get("MIGRATIO_TEST_POSTGRES_URL"),
        extra_secrets={"a token of this session": token},
    )
    record(
        "R6",
        "secrets grep",
        hits=len(scan.hits),
        places=scan.places,
        bytes_scanned=scan.bytes_scanned,
        secrets=len(scan.secrets),
        seconds=round(time.monotonic() - started, 1),
    )
    return scan


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL: $MIGRATIO_TEST_POSTGRES_URL, else a private cluster."""
    configured = os.environ.get("MIGRATIO_TEST_POSTGRES_URL")
    if configured:
        yield configured
        return
    import testbed_lib

    directory = tmp_path_factory.mktemp("postgres")
    url = testbed_lib.start_postgres(directory)
    yield url
    testbed_lib.stop_postgres(directory)


@pytest.fixture(scope="session")
def site_a(testbed: testbed_lib.Bed) -> Connection:
    """Direct Glance access to site-a, independent of migratio's driver."""
    from tests.support import glance_peer

    return glance_peer.connect("site-a")


@pytest.fixture(scope="session")
def site_b(testbed: testbed_lib.Bed) -> Connection:
    from tests.support import glance_peer

    return glance_peer.connect("site-b")


@pytest.fixture
def proxy(testbed: testbed_lib.Bed) -> Iterator[FreezingProxy]:
    """site-a's Glance behind a proxy that counts and can freeze what crosses it
    (reached through ``image_endpoint_override``). Modules that put another peer
    behind one (sshd, moto) define their own ``proxy``."""
    glance = urllib.parse.urlsplit(testbed.glance_urls["site-a"])
    assert glance.hostname and glance.port
    with FreezingProxy(glance.hostname, glance.port) as running:
        yield running


@pytest.fixture(scope="module")
def qcow2_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 MiB qcow2 of random data, one per test module (dedup is per module)."""
    return images.random_qcow2(tmp_path_factory.mktemp("img") / "random64.qcow2", 64)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A fresh ledger at the newest schema, on SQLite and on a real PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = empty_ledger_engine(url)
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


@pytest.fixture
def daemon_config(testbed: testbed_lib.Bed, tmp_path: Path) -> Path:
    """A daemon config of the test bed's sites with this test's own work dir and ledger."""
    return write_daemon_config(tmp_path, testbed.dir / "sites")


@pytest.fixture
def engine_bed(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineBed]:
    """Stub sites, a SQLite ledger and fast settings for tests of the engine."""
    with open_engine_bed(tmp_path, tmp_path_factory.getbasetemp()) as bed:
        yield bed
