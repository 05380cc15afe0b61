"""Long transfers outlive their Keystone tokens (issue 14, part 6).

Both sites' Keystones are restarted with a short ``[token] expiration`` and a
migration is throttled (a pause at every MiB checkpoint, ``transfer.bytes``) so
that its one source download and its one destination upload each outlast a
token. It must end ``done`` in its first attempt: keystonemiddleware
checks a token when a request starts, not while its body streams, and every
request after an expiry carries a new token (keystoneauth asks for one whenever
the held token has less than 120 s left, ``MIN_TOKEN_LIFE_SECONDS``).

The default run uses 4 s tokens (upload ~11 s); ``chaos`` runs 150 s tokens (~7 min:
``python3 -m pytest -m chaos -s tests/e2e/test_token_expiry.py``).
What each run measured is printed (``pytest -s``): the expiration, how long the
migration and its two streams lasted, the tokens issued, and the audit trail.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import testbed_lib
from openstack.connection import Connection

from tests.support import glance_peer, images, migratio_cli
from tests.support.daemon_config import write_daemon_config

pytestmark = pytest.mark.testbed

SITES = ("site-a", "site-b")
# Well over what a transfer holds in flight (8 MiB read ahead, then socket buffers:
# the source's download ends ~21 MiB before the upload), so the download, too,
# outlasts a token.
SIZE_MIB = 56
# eventlet's access line: ... "METHOD PATH HTTP/1.1" STATUS BYTES SECONDS
ACCESS = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.1" (?P<status>\d{3}) (?P<bytes>\d+) (?P<s>[\d.]+)'
)
TOKEN_ISSUED = re.compile(r"POST /v3/auth/tokens => .*\(HTTP/1\.1 201\)")


@dataclass(frozen=True)
class Case:
    """A token lifetime and a throttle that makes each stream outlast it several times."""

    expiration: int
    pause_per_mib: float


# 4 s: short, yet longer than a token takes from Keystone to Glance's check on a
# loaded 2-core machine. Upload ~11 s, download ~7 s.
SHORT = Case(expiration=4, pause_per_mib=0.2)
# 150 s, not 120: keystoneauth then holds each token for 30 s before it renews it,
# so a cached token's expiry is met as well as a fresh one's. Upload ~5.5 min,
# download ~3.5 min.
LONG = Case(expiration=150, pause_per_mib=6.0)


@contextmanager
def short_tokens(bed: testbed_lib.Bed, seconds: int) -> Iterator[None]:
    """Both Keystones issue ``seconds``-long tokens for the block, then their own again."""
    with ThreadPoolExecutor(len(SITES)) as pool:
        old = list(pool.map(lambda s: testbed_lib.set_token_expiration(bed.dir, s, seconds), SITES))
    try:
        yield
    finally:
        with ThreadPoolExecutor(len(SITES)) as pool:
            list(pool.map(testbed_lib.set_token_expiration, [bed.dir] * 2, SITES, old))


def _log_size(bed: testbed_lib.Bed, name: str) -> int:
    return (bed.logs_dir / f"{name}.log").stat().st_size


def _log_since(bed: testbed_lib.Bed, name: str, offset: int) -> str:
    with (bed.logs_dir / f"{name}.log").open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def _requests(text: str, method: str, path: str) -> list[tuple[int, int, float]]:
    """(status, bytes answered, seconds) of each access line for ``method path``."""
    return [
        (int(m["status"]), int(m["bytes"]), float(m["s"]))
        for m in ACCESS.finditer(text)
        if m["method"] == method and m["path"] == path
    ]


def _migrate_with_short_tokens(
    case: Case, bed: testbed_lib.Bed, tmp_path: Path, site_a: Connection, site_b: Connection
) -> None:
    config = write_daemon_config(tmp_path, bed.dir / "sites")
    source_file = images.random_qcow2(tmp_path / "source.qcow2", SIZE_MIB)
    source_id = glance_peer.upload(site_a, source_file, name="token-expiry")
    migration_id = migratio_cli.submit(config, source_id)
    throttle = {"MIGRATIO_FAULTS": f"transfer.bytes=pause:{case.pause_per_mib}@1048576"}
    logs = ("keystone-site-a", "keystone-site-b", "glance-site-a", "glance-site-b")
    restarting = time.monotonic()
    with short_tokens(bed, case.expiration):
        restarted_in = time.monotonic() - restarting
        offsets = {name: _log_size(bed, name) for name in logs}
        ledger = migratio_cli.ledger_of(config)
        started = time.monotonic()
        daemon = migratio_cli.start(config, tmp_path / "migratio.log", env=throttle)
        try:
            timeout = 120 + SIZE_MIB * case.pause_per_mib * 3
            migratio_cli.wait_for(ledger, migration_id, state="done", timeout=timeout)
            lasted = time.monotonic() - started
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
        logged = {name: _log_since(bed, name, offset) for name, offset in offsets.items()}

    shown = migratio_cli.show(config, migration_id)
    assert shown["state"] == "done" and shown["error"] is None
    assert not [row for row in shown["history"] if "retrying" in row["message"]], shown["history"]
    dest_id = shown["dest_image_id"]
    copy = glance_peer.get(site_b, dest_id)
    assert copy is not None and copy["os_hash_value"] == images.sha512_of(source_file)
    # Nothing restarted from zero: one whole download (exporting's format probe
    # reads only the head) and one upload, each outliving its token.
    size = source_file.stat().st_size
    reads = _requests(logged["glance-site-a"], "GET", f"/v2/images/{source_id}/file")
    [(read_status, _, read_s)] = [read for read in reads if read[1] >= size]
    [(write_status, _, write_s)] = _requests(
        logged["glance-site-b"], "PUT", f"/v2/images/{dest_id}/file"
    )
    assert read_status == 200 and write_status == 204
    assert read_s > case.expiration + 1 and write_s > 2 * case.expiration
    # Requests after an expiry were made with new tokens, and none was refused:
    # site-b's registration comes after the upload, so after its first token's
    # end (site-a may need only one: nothing is asked of it after the download).
    issued = {name: len(TOKEN_ISSUED.findall(logged[f"keystone-{name}"])) for name in SITES}
    assert issued["site-a"] >= 1 and issued["site-b"] >= 2, issued
    for site in SITES:
        assert '" 401 ' not in logged[f"glance-{site}"], f"glance-{site} refused a token"
    print(
        f"\ntoken expiration {case.expiration} s; migration {lasted:.1f} s "
        f"(download {read_s:.1f} s, upload {write_s:.1f} s); tokens issued {issued}; "
        f"Keystones restarted in {restarted_in:.1f} s"
    )
    for row in shown["history"]:
        print(f"  {row['at']}  {row['from']} -> {row['to']}: {row['message']}")


def test_a_migration_outlives_4_second_tokens(
    testbed: testbed_lib.Bed, tmp_path: Path, site_a: Connection, site_b: Connection
) -> None:
    _migrate_with_short_tokens(SHORT, testbed, tmp_path, site_a, site_b)


@pytest.mark.chaos  # ~7 min
@pytest.mark.timeout(1200)
def test_a_migration_outlives_tokens_of_a_few_minutes(
    testbed: testbed_lib.Bed, tmp_path: Path, site_a: Connection, site_b: Connection
) -> None:
    _migrate_with_short_tokens(LONG, testbed, tmp_path, site_a, site_b)
