"""The crash matrix (issue 11, R1): SIGKILL at every awkward moment, on each path.

Each run migrates a fresh upload of one small random qcow2 from site-a, on one of
the three paths (O→O to Glance, O→AWS by ebs-direct to moto, O→SSH through the
bed's sshd), with a daemon that kills itself (``MIGRATIO_FAULTS``,
``POINT=crash``) at one fault point, or that the test kills with SIGKILL after a
random delay. A second daemon on the same ledger then runs until idle (the dead
one's lease expires after ``lease_seconds``). Every run must end ``done`` with
exactly one destination image, byte-identical to the source (read back from the
peer), and nothing left behind on any peer (``tests/support/leaks.py``).

The full matrix and the 50 random kills are ``chaos`` (``support/chaos``, or
``pytest -m chaos -k crash``); one point per path and three random kills run by
default.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from openstack.connection import Connection

from migratio import faults
from migratio.drivers.base import MIGRATION_ID
from migratio.ledger.store import Ledger
from tests.support import aws_peer, glance_peer, images, leaks, migratio_cli, reliability
from tests.support.daemon_config import write_daemon_config
from tests.support.ledgers import empty_ledger_engine
from tests.support.redis_peer import sidekiq_job

pytestmark = [pytest.mark.testbed, pytest.mark.reliability]

SOURCE_MIB = 8
LEASE_SECONDS = 3
INTAKE_HEARTBEAT_SECONDS = 1
CRASH_TIMEOUT = 180
# Run after run the one source image is uploaded anew: a new source uuid, so no
# run finds an earlier run's copy (dedup) and each one really migrates.


@dataclass(frozen=True)
class Route:
    """One of the three paths: its name in the figures, its destination site,
    and a destination of the same kind that requires raw (so it converts)."""

    name: str
    site: str
    converting_site: str

    @property
    def is_aws(self) -> bool:
        return self.site.startswith("aws")


ROUTES = {
    "o2o": Route("O→O", "site-b", "site-b-raw"),
    "o2aws": Route("O→AWS ebs-direct", "aws-a", "aws-a"),
    "o2ssh": Route("O→SSH", "site-b-ssh", "site-b-ssh-raw"),
}

STATES = ("queued", "exporting", "converting", "uploading", "registering")
TRANSITIONS = [
    f"transition.{when}_commit.{state}" for state in STATES for when in ("before", "after")
]
# "@1": the first time the point passes a byte (mid-transfer, not at its start).
POINTS = {
    "o2o": [
        *TRANSITIONS,
        "intake.after_move",
        "destination.record_created",
        "transfer.bytes.uploading@1",
        "convert.running",
    ],
    "o2aws": [
        *TRANSITIONS,
        "intake.after_move",
        # ebs-direct sends a qcow2's blocks while it downloads (uploading): killed
        # halfway through the download, with blocks gone; then while qemu-img
        # maps the downloaded file to check the runs that were sent.
        f"follow.bytes@{SOURCE_MIB * 1024 * 1024 // 2}",
        "map.running",
        "destination.record_created",
        "aws.block_sent",
        "aws.snapshot_completed",
        "aws.image_registered",
    ],
    "o2ssh": [
        *TRANSITIONS,
        "intake.after_move",
        "destination.record_created",
        "ssh.sftp_bytes@1",
        "convert.running",
    ],
}
QUICK = [("o2o", "transfer.bytes.uploading@1"), ("o2aws", "aws.image_registered"),
         ("o2ssh", "ssh.sftp_bytes@1")]  # fmt: skip
RANDOM_KILLS = 50
KILLED_IN = "killed in "
# Seconds from the claim (the migration leaves ``queued``) to ``done`` of an 8 MiB
# image on an idle 2-core machine: about 0.3 (O→O), 1 (O→AWS) and 15 (O→SSH: the
# host's ``openstack`` CLI takes ~2 s a call); several times that on a busy one.
# Kills are drawn over a little more than the idle time (O→SSH: a little less, as
# its last seconds are the daemon's own exit) and counted from the claim, so the
# daemon's start-up does not decide where they land; a few land after the end
# (counted apart: "killed_in ... done / after done").
KILL_WINDOW = {"o2o": 0.5, "o2aws": 1.2, "o2ssh": 11.0}
# The quick subset's kills leave SSH (~30 s a run) to its crash point.
QUICK_RANDOM_ROUTES = ("o2o", "o2aws", "o2o")
LEDGERS = ("sqlite", "postgresql")


def _matrix() -> Iterator[Any]:
    for key, points in POINTS.items():
        for point in points:
            yield pytest.param(key, point, id=f"{key}-{point}", marks=pytest.mark.chaos)


def _random_kills(count: int, seed: int, keys: tuple[str, ...], chaos: bool) -> Iterator[Any]:
    """Paths in turn, every other run on a PostgreSQL ledger; a delay drawn per run.
    The figures count the whole matrix per path, the quick subset as one row."""
    for index in range(count):
        key = keys[index % len(keys)]
        ledger = LEDGERS[index % len(LEDGERS)]
        delay = round(random.Random(seed + index).uniform(0.0, KILL_WINDOW[key]), 2)
        marks = pytest.mark.chaos if chaos else ()
        tally = f"{ROUTES[key].name} random kills" if chaos else "random kills, quick subset"
        case = f"{key}-{ledger}-{index:02d}-{delay}s"
        yield pytest.param(key, ledger, delay, tally, id=case, marks=marks)


# -- the peers and the tally --------------------------------------------------------


@dataclass
class Bed:
    sites_dir: Path
    source: Path
    sha512: str  # of the source qcow2
    raw: Path
    raw_sha512: str
    site_a: Connection
    site_b: Connection
    ec2: Any
    ebs: Any
    s3: Any
    staging_dir: Path
    redis: redis.Redis


@pytest.fixture(scope="module")
def bed(
    testbed: Any,
    site_a: Connection,
    site_b: Connection,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Bed]:
    directory = tmp_path_factory.mktemp("crash")
    sites = directory / "sites"
    sites.mkdir()
    for file in testbed.sites_dir.glob("*.yml"):
        shutil.copy(file, sites)
    ssh_site = yaml.safe_load((sites / "site-b-ssh.yml").read_text())
    (sites / "site-b-ssh-raw.yml").write_text(yaml.safe_dump({**ssh_site, "disk_format": "raw"}))
    source = images.random_qcow2(directory / "source.qcow2", SOURCE_MIB)
    raw = images.as_raw(source, directory / "source.raw")
    moto_url = str(testbed.env["MIGRATIO_MOTO_URL"])
    client = redis.Redis.from_url(testbed.env["MIGRATIO_REDIS_URL"])
    yield Bed(
        sites_dir=sites,
        source=source,
        sha512=images.sha512_of(source),
        raw=raw,
        raw_sha512=images.sha512_of(raw),
        site_a=site_a,
        site_b=site_b,
        ec2=aws_peer.client("ec2", moto_url),
        ebs=aws_peer.client("ebs", moto_url),
        s3=aws_peer.client("s3", moto_url),
        staging_dir=Path(ssh_site["staging_dir"]),
        redis=client,
    )
    client.close()


@pytest.fixture(scope="module")
def tally() -> Iterator[dict[str, Counter[str]]]:
    """Figures per case of row R1, recorded when the module's runs are over."""
    counts: dict[str, Counter[str]] = {}
    yield counts
    for case, figures in counts.items():
        shown: dict[str, Any] = {}
        states = []
        for name, value in figures.items():
            if name.startswith(KILLED_IN):
                states.append(f"{name.removeprefix(KILLED_IN)} {value}")
            else:
                shown[name] = value
        if states:  # where the random kills found the migration
            order = ["intake", *STATES, "done", "after"]
            rank = {word: index for index, word in enumerate(order)}
            states.sort(key=lambda state: rank.get(state.split()[0], len(order)))
            shown["killed_in"] = ", ".join(states)
        reliability.record("R1", case, **shown)


# -- one run ------------------------------------------------------------------------


@dataclass
class Outcome:
    migration_id: str
    state: str
    error: str | None
    destinations: list[str]
    byte_mismatch: bool
    leftovers: list[str]


def _crash_run(
    bed: Bed,
    run_dir: Path,
    key: str,
    *,
    point: str | None = None,
    delay: float | None = None,
    database_url: str = "",
) -> tuple[Outcome, str]:
    """One migration, crashed once, then finished by a second daemon; the outcome
    and the state the crash found it in ("" when the first daemon finished first)."""
    route = ROUTES[key]
    name = point.partition("@")[0] if point else ""
    converting = name.startswith(("convert.", "map."))
    destination = route.converting_site if converting else route.site
    namespace = f"crash-{uuid.uuid4().hex[:8]}"
    config = write_daemon_config(
        run_dir,
        bed.sites_dir,
        namespace=namespace,
        lease_seconds=LEASE_SECONDS,
        intake_heartbeat_seconds=INTAKE_HEARTBEAT_SECONDS,
        concurrency=1,
        retry={"max_attempts": 5, "base_delay": 0.2, "max_delay": 1.0},
        **({"database_url": database_url} if database_url else {}),
    )
    source_id = glance_peer.upload(bed.site_a, bed.source, name=f"crash {key} {run_dir.name}")
    migration_id = ""
    with ExitStack() as stack:
        stack.callback(lambda: _tidy(bed, namespace, source_id, migration_id))
        if name == "intake.after_move":
            job = sidekiq_job([source_id, destination], jid=uuid.uuid4().hex[:24])
            bed.redis.lpush(f"{namespace}:queue:migration_site-a", job)
        else:
            migration_id = migratio_cli.submit(config, source_id, dest=destination)
        crashed = _first_daemon(config, run_dir / "daemon1.log", point, delay, migration_id)
        ledger = migratio_cli.ledger_of(config)
        stack.callback(ledger.close)
        killed_in = ledger.get(migration_id).state if migration_id else "intake"
        killed_in = killed_in if crashed else ""
        if name == "intake.after_move":
            assert ledger.migrations() == [], "the job reached the ledger before the crash"
            # The dead consumer's jobs are handed back once its heartbeat expires;
            # ``--until-idle`` started sooner may find nothing to do and exit.
            time.sleep(INTAKE_HEARTBEAT_SECONDS * 1.5)
        migratio_cli.run_until_idle(config, timeout=300)
        (migration,) = ledger.migrations()
        migration_id = migration.id
        outcome = _outcome(bed, route, config, ledger, source_id, migration_id, converting)
        return outcome, killed_in


def _first_daemon(
    config: Path, log: Path, point: str | None, delay: float | None, migration_id: str
) -> bool:
    """Run the daemon that dies; True if it died before finishing its work."""
    if point is not None:
        name, _, threshold = point.partition("@")
        rule = f"{name}=crash" + (f"@{threshold}" if threshold else "")
        daemon = migratio_cli.start(
            config, log, until_idle=True, env={faults.ENVIRONMENT_VARIABLE: rule}
        )
        try:
            returncode = daemon.wait(CRASH_TIMEOUT)
        finally:
            if daemon.poll() is None:  # never reached the point: not left running
                daemon.kill()
                daemon.wait(30)
        text = log.read_text(errors="replace")
        assert returncode == -signal.SIGKILL, f"no crash at {point} (exit {returncode}):\n{text}"
        assert f"fault point {name}: crash" in text
        return True
    assert delay is not None
    daemon = migratio_cli.start(config, log, until_idle=True)
    ledger = migratio_cli.ledger_of(config)
    try:
        deadline = time.monotonic() + CRASH_TIMEOUT
        while ledger.get(migration_id).state == "queued" and daemon.poll() is None:
            assert time.monotonic() < deadline, "the daemon never claimed the migration"
            time.sleep(0.02)
        daemon.wait(delay)
        return False  # done before the kill: a run like any other, counted apart
    except subprocess.TimeoutExpired:
        pass
    finally:
        ledger.close()
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(30)
    return True


def _outcome(
    bed: Bed,
    route: Route,
    config: Path,
    ledger: Ledger,
    source_id: str,
    migration_id: str,
    converting: bool,
) -> Outcome:
    shown = migratio_cli.show(config, migration_id)
    peers = leaks.Peers(
        work_dir=config.parent / "work",
        glance=None if route.is_aws else bed.site_b,
        ec2=bed.ec2 if route.is_aws else None,
        s3=bed.s3 if route.is_aws else None,
        staging_dir=bed.staging_dir if route.site.endswith("ssh") else None,
    )
    destinations = leaks.destination_images(peers, migration_id, source_id)
    kept = [artifact.ref for artifact in ledger.artifacts(migration_id, "kept")]
    mismatch = True
    if shown["state"] == "done" and destinations == [shown["dest_image_id"]]:
        mismatch = not _same_bytes(bed, route, migration_id, shown["dest_image_id"], converting)
    found = leaks.leftovers(peers, migration_id, source_id, kept=kept)
    found += leaks.ledger_leftovers(ledger, migration_id)
    return Outcome(migration_id, shown["state"], shown["error"], destinations, mismatch, found)


def _same_bytes(bed: Bed, route: Route, migration_id: str, image_id: str, converting: bool) -> bool:
    """The destination's bytes, read back from the peer, are the source's."""
    if not route.is_aws:
        expected = bed.raw_sha512 if converting else bed.sha512
        return glance_peer.sha512_of_image(bed.site_b, image_id) == expected
    snapshots = aws_peer.snapshots_of(bed.ec2, migration_id)
    if len(snapshots) != 1:
        return False
    rebuilt = bed.raw.with_name(f"rebuilt-{migration_id}.raw")
    try:
        aws_peer.rebuild_disk(bed.ebs, snapshots[0]["SnapshotId"], rebuilt, bed.raw.stat().st_size)
        return aws_peer.same_bytes(rebuilt, bed.raw)
    finally:
        rebuilt.unlink(missing_ok=True)


def _tidy(bed: Bed, namespace: str, source_id: str, migration_id: str) -> None:
    """Drop what the run made on the peers, so the peers stay small."""
    for key in bed.redis.scan_iter(match=f"{namespace}:*"):
        bed.redis.delete(key)
    glance_peer.delete(bed.site_a, source_id)
    if not migration_id:
        return
    for image in glance_peer.find(bed.site_b, **{MIGRATION_ID: migration_id}):
        glance_peer.delete(bed.site_b, image["id"])
    for ami in aws_peer.images_of(bed.ec2, **{MIGRATION_ID: migration_id}):
        bed.ec2.deregister_image(ImageId=ami["ImageId"])
    for snapshot in aws_peer.snapshots_of(bed.ec2, migration_id):
        bed.ec2.delete_snapshot(SnapshotId=snapshot["SnapshotId"])


def _count(
    tally: dict[str, Counter[str]],
    case: str,
    outcome: Outcome,
    killed_in: str,
    ledger: str = "sqlite",
) -> None:
    figures = tally.setdefault(case, Counter())
    figures["runs"] += 1
    figures["done"] += outcome.state == "done"
    figures["duplicates"] += max(0, len(outcome.destinations) - 1)
    figures["leaked"] += len(outcome.leftovers)
    figures["byte_mismatches"] += outcome.byte_mismatch
    if "random" in case:
        figures["killed_before_done"] += bool(killed_in)
        figures[f"{KILLED_IN}{killed_in or 'after done'}"] += 1
        figures["on_postgresql"] += ledger == "postgresql"


def _ledger_url(request: pytest.FixtureRequest, ledger: str) -> str:
    """ "" (the daemon's SQLite file) or the session's PostgreSQL, emptied for this run."""
    if ledger == "sqlite":
        return ""
    url = str(request.getfixturevalue("postgres_url"))
    empty_ledger_engine(url).dispose()
    return url


def _check(outcome: Outcome) -> None:
    assert outcome.state == "done", outcome.error
    assert len(outcome.destinations) == 1, outcome.destinations
    assert not outcome.byte_mismatch
    assert outcome.leftovers == []


# -- the tests ------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "point"), list(_matrix()))
def test_crash_point(
    bed: Bed, tally: dict[str, Counter[str]], tmp_path: Path, key: str, point: str
) -> None:
    outcome, killed_in = _crash_run(bed, tmp_path, key, point=point)
    _count(tally, f"{ROUTES[key].name} crash points", outcome, killed_in)
    _check(outcome)


@pytest.mark.parametrize(("key", "point"), QUICK, ids=[f"{k}-{p}" for k, p in QUICK])
def test_crash_point_quick(
    bed: Bed, tally: dict[str, Counter[str]], tmp_path: Path, key: str, point: str
) -> None:
    outcome, killed_in = _crash_run(bed, tmp_path, key, point=point)
    _count(tally, "crash points, quick subset", outcome, killed_in)
    _check(outcome)


@pytest.mark.parametrize(
    ("key", "ledger", "delay", "tally_as"),
    [
        *_random_kills(RANDOM_KILLS, 1100, tuple(ROUTES), chaos=True),
        *_random_kills(len(QUICK_RANDOM_ROUTES), 7, QUICK_RANDOM_ROUTES, chaos=False),
    ],
)
def test_random_kill(
    request: pytest.FixtureRequest,
    bed: Bed,
    tally: dict[str, Counter[str]],
    tmp_path: Path,
    key: str,
    ledger: str,
    delay: float,
    tally_as: str,
) -> None:
    url = _ledger_url(request, ledger)
    outcome, killed_in = _crash_run(bed, tmp_path, key, delay=delay, database_url=url)
    _count(tally, tally_as, outcome, killed_in, ledger)
    _check(outcome)


def test_the_leak_checker_sees_what_a_run_could_leave(bed: Bed, tmp_path: Path) -> None:
    """Every kind of leftover the matrix looks for, planted on the real peers, is found."""
    migration_id = str(uuid.uuid4())
    source_id = str(uuid.uuid4())
    work = tmp_path / "work"
    (work / migration_id).mkdir(parents=True)
    (work / migration_id / "converted.raw").write_bytes(b"x")
    (work / "ledger.sqlite").write_bytes(b"")
    bed.staging_dir.mkdir(parents=True, exist_ok=True)
    staged = bed.staging_dir / f"{migration_id}.part"
    staged.write_bytes(b"x")
    tag = {"Key": MIGRATION_ID, "Value": migration_id}
    queued = bed.site_b.image.post(
        "/images",
        json={"name": "leak", "disk_format": "raw", "container_format": "bare",
              MIGRATION_ID: migration_id},
    ).json()["id"]  # fmt: skip
    snapshot = bed.ebs.start_snapshot(VolumeSize=1, Tags=[tag])["SnapshotId"]
    ami = bed.ec2.register_image(
        Name=f"untagged-{source_id}",
        RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}],
    )["ImageId"]
    bucket = f"crash-leaks-{uuid.uuid4().hex[:8]}"
    bed.s3.create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": aws_peer.REGION}
    )
    key = f"migratio/{migration_id}/disk.vmdk"
    bed.s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    upload = bed.s3.create_multipart_upload(Bucket=bucket, Key=key + ".2")["UploadId"]
    try:
        peers = leaks.Peers(work, bed.site_b, bed.ec2, bed.s3, bed.staging_dir)
        found = leaks.leftovers(peers, migration_id, source_id)
        assert sorted(line.split(" (")[0] for line in found) == sorted(
            [
                f"work dir file {work / migration_id / 'converted.raw'}",
                f"Glance image {queued}",
                f"AMI {ami}",
                f"EBS snapshot {snapshot}",
                f"S3 object s3://{bucket}/{key}",
                f"S3 multipart upload s3://{bucket}/{key}.2",
                f"SSH staging file {staged.name}",
            ]
        )
        assert leaks.destination_images(peers, migration_id, source_id) == sorted([queued, ami])
        assert leaks.leftovers(peers, migration_id, source_id, kept=[queued, ami, snapshot]) == [
            f"work dir file {work / migration_id / 'converted.raw'}",
            f"Glance image {queued} (queued)",  # kept, but not finished
            f"S3 object s3://{bucket}/{key}",
            f"S3 multipart upload s3://{bucket}/{key}.2 ({upload})",
            f"SSH staging file {staged.name}",
        ]
    finally:
        staged.unlink()
        glance_peer.delete(bed.site_b, queued)
        bed.ec2.deregister_image(ImageId=ami)
        bed.ec2.delete_snapshot(SnapshotId=snapshot)
        bed.s3.abort_multipart_upload(Bucket=bucket, Key=key + ".2", UploadId=upload)
        bed.s3.delete_object(Bucket=bucket, Key=key)
        bed.s3.delete_bucket(Bucket=bucket)
