"""Shared fixtures: the real test bed (two clouds, a Keystone and a Glance each),
PostgreSQL, daemon configs."""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "support" / "testbed"))
# pytest caches a test module's assertion-rewritten code only where Python may
# write bytecode; with PYTHONDONTWRITEBYTECODE set (as on CI) every run and every
# xdist worker re-parsed and rewrote ~150 modules (~2.5 s each). The caches are
# git-ignored, like the ones support/test compiles before the run.
sys.dont_write_bytecode = False

if TYPE_CHECKING:
    # What a fixture needs is imported in it: the peers' libraries (openstacksdk
    # above all) cost every run ~1 s, the engine and ledger ~1 s in pytest-xdist's
    # controller, which runs no test.
    import testbed_lib
    from openstack.connection import Connection

    from migratio.ledger.store import Ledger
    from tests.support import secrets_grep
    from tests.support.engine import EngineBed
    from tests.support.freezing_proxy import FreezingProxy


UNIT_TESTS = ROOT / "tests" / "unit"
# Workers for the peer tests: one per core of a CI machine (2).
PEER_TEST_WORKERS = 2
# Where a unit-only run keeps its temporary files (set by pytest_configure).
UNIT_BASETEMP = pytest.StashKey[Path]()


def _only_unit_tests(config: pytest.Config) -> bool:
    """Whether this run is unit tests only (no peer, small files), several at once."""
    return bool(config.args) and all(
        "::" not in arg and Path(arg).resolve().is_relative_to(UNIT_TESTS) for arg in config.args
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Unit tests write many small files (a ledger, images, work dirs per test): on
    tmpfs, where there is one, a run takes ~1 s less. A directory per run (runs
    side by side do not meet), removed when the run passes; a failed run's stays
    for an hour, for a look. Peer tests (images of a GiB) stay on disk."""
    shm = Path("/dev/shm")
    if (
        not _only_unit_tests(config)
        or config.option.basetemp is not None  # given, or an xdist worker's
        or not (shm.is_dir() and os.access(shm, os.W_OK))
    ):
        return
    prefix = f"migratio-unit-{os.getuid()}-"
    for old in shm.glob(f"{prefix}*"):
        if time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)
    config.option.basetemp = tempfile.mkdtemp(prefix=prefix, dir=shm)
    config.stash[UNIT_BASETEMP] = Path(config.option.basetemp)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's addopts): the unit tests share nothing and run on
    several workers. The peer tests wait on their peers about half of the time:
    two workers, each with a test bed and a PostgreSQL database of its own, keep
    both cores busy. A bed given by $MIGRATIO_TESTBED_DIR is one for the whole
    run, so its tests run in this process, as does a single test named with ``::``."""
    if _only_unit_tests(config):
        return min(4, max(2, os.cpu_count() or 1))
    if os.environ.get("MIGRATIO_TESTBED_DIR") or any("::" in arg for arg in config.args):
        return 0
    return PEER_TEST_WORKERS


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The peer tests of one file run on one worker, in their order (``--dist
    loadgroup``): they share the file's fixtures (an image, moto's account)."""
    for item in items:
        if not item.path.is_relative_to(UNIT_TESTS):
            item.add_marker(pytest.mark.xdist_group(str(item.path.relative_to(ROOT))))


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported lives to the end: frozen, the collector no longer
    walks it in each full collection (~0.3 s of a unit-test worker)."""
    gc.freeze()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """pytest collects garbage five times at exit, for unraisable exceptions: on a
    test process's heap, ~0.5 s. One collection here finds them all the same; the
    survivors are then frozen, so those five passes have nothing left to walk."""
    gc.collect()
    gc.freeze()
    basetemp = session.config.stash.get(UNIT_BASETEMP, None)
    in_controller = not hasattr(session.config, "workerinput")
    if basetemp is not None and in_controller and session.exitstatus == 0:
        shutil.rmtree(basetemp, ignore_errors=True)


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
        postgres_url=configured_postgres(),
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


def configured_postgres() -> str | None:
    """$MIGRATIO_TEST_POSTGRES_URL, with a database of this xdist worker's own."""
    configured = os.environ.get("MIGRATIO_TEST_POSTGRES_URL")
    if not configured:
        return None
    from tests.support.ledgers import worker_database

    return worker_database(configured, os.environ.get("PYTEST_XDIST_WORKER", ""))


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL: $MIGRATIO_TEST_POSTGRES_URL, else a private cluster."""
    configured = configured_postgres()
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
    from tests.support.freezing_proxy import FreezingProxy

    glance = urllib.parse.urlsplit(testbed.glance_urls["site-a"])
    assert glance.hostname and glance.port
    with FreezingProxy(glance.hostname, glance.port) as running:
        yield running


@pytest.fixture(scope="module")
def qcow2_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 MiB qcow2 of random data, one per test module (dedup is per module)."""
    from tests.support import images

    return images.random_qcow2(tmp_path_factory.mktemp("img") / "random64.qcow2", 64)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A fresh ledger at the newest schema, on SQLite and on a real PostgreSQL."""
    from migratio.ledger.database import upgrade
    from migratio.ledger.store import Ledger
    from tests.support.ledgers import empty_ledger_engine

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
    from tests.support.daemon_config import write_daemon_config

    return write_daemon_config(tmp_path, testbed.dir / "sites")


@pytest.fixture
def engine_bed(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineBed]:
    """Stub sites, a SQLite ledger and fast settings for tests of the engine."""
    from tests.support.engine import open_engine_bed

    with open_engine_bed(tmp_path, tmp_path_factory.getbasetemp()) as bed:
        yield bed
