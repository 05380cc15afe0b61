"""Writing a sparse raw disk into a pending EBS snapshot, block by block, resumably.

The disk is a sparse raw file, or the staged image itself read through its
disk map (``transfer.disk_map``): the same blocks either way.

Only non-zero 512 KiB blocks are sent, ``workers`` at a time, each with its
SHA256. Which blocks have landed is journalled through the transfer (at most
once a second, and whenever the writer stops), so a resumed run sends only the
rest, into the snapshot id the journal names: a repeated ClientToken does not
bring an old snapshot back on every emulator (moto starts a new one). A resumed
run reads the data blocks already sent again (not the holes) to rebuild the
manifest and CompleteSnapshot's aggregate, but does not send them.

What the snapshot was verified to hold is its manifest digest
(``blocks.Manifest``), built from the data alone. Only a payload whose sha512
is known beforehand (one not converted here, so downloaded whole anyway) is
also hashed byte for byte, holes included, to check that sha512.

A snapshot started from a parent (an earlier version) is sent only the blocks
``versions.plan`` says differ from the parent's; CompleteSnapshot then counts
and aggregates the blocks written to it, as AWS defines both.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migratio import faults, stall
from migratio.drivers.aws.block_budget import BUDGET
from migratio.drivers.aws.blocks import (
    BLOCK_SIZE,
    BUFFERS,
    Block,
    BlockSet,
    Manifest,
    linear_checksum,
    scan,
    scan_mapped,
)
from migratio.drivers.aws.encryption import is_zero, with_zero_blocks
from migratio.drivers.aws.errors import translated
from migratio.drivers.aws.session import AwsClients
from migratio.drivers.aws.snapshots import Snapshots
from migratio.drivers.aws.versions import BlockMap, Kind, plan
from migratio.drivers.base import Transfer
from migratio.errors import IntegrityError, PermanentError, TransientError
from migratio.polling import Backoff, poll

log = logging.getLogger(__name__)

JOURNAL_INTERVAL = 1.0
# Blocks read beyond those on the wire, so a worker that is answered finds the
# next block ready: reading and hashing one takes ~2 ms, a PUT far longer. Each
# is 512 KiB of the daemon's memory (twice the workers held 16 MiB a migration).
READ_AHEAD_BLOCKS = 4
# Waiting for room in the daemon's block budget (block_budget.py), checkpointing between.
BUDGET_WAIT_SECONDS = 0.5
# A completed snapshot stays "pending" while AWS finishes it (minutes for large
# sparse ones); polled with no deadline, each wait a checkpoint (shutdown, cancel).
COMPLETION_BACKOFF = Backoff(first=1.0, factor=1.5, longest=10.0)


@dataclass
class Journal:
    """What the transfer journal says about one snapshot being written."""

    snapshot_id: str
    sent: BlockSet = field(default_factory=BlockSet)
    blocks_put: int = 0  # PutSnapshotBlock calls answered, over every run
    completed: bool = False

    @classmethod
    def load(cls, transfer: Transfer, snapshot_id: str) -> Journal:
        state = transfer.load_state()
        if state.get("snapshot_id") != snapshot_id:
            return cls(snapshot_id)
        return cls(
            snapshot_id,
            BlockSet.from_json(state.get("sent")),
            int(state.get("blocks_put") or 0),
            bool(state.get("completed")),
        )

    def save(self, transfer: Transfer, **extra: Any) -> None:
        transfer.save_state(
            {
                "method": "ebs-direct",
                "snapshot_id": self.snapshot_id,
                "sent": self.sent.to_json(),
                "blocks_sent": len(self.sent),
                "blocks_put": self.blocks_put,
                "completed": self.completed,
                **extra,
            }
        )


@dataclass(frozen=True)
class Written:
    """What a finished snapshot was verified to hold.

    manifest_sha512: the payload's manifest digest (``blocks.Manifest``).
    payload_sha512: the sha512 of every byte of the payload, when one was known
        beforehand and checked; None otherwise (it is never computed for nothing).
    blocks: every non-zero block of the payload, for the next version to start from.
    kinds: how many blocks of each ``versions.Kind`` (all added without a parent).
    """

    manifest_sha512: str
    payload_sha512: str | None
    blocks: BlockMap
    kinds: dict[str, int]


@dataclass
class _Tally:
    """What one pass over the payload found: the manifest, the new block map, and
    the digests of the blocks the snapshot is written (in index order)."""

    manifest: Manifest
    blocks: dict[int, bytes] = field(default_factory=dict)
    written: list[bytes] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=lambda: {kind.value: 0 for kind in Kind})


class SnapshotWriter:
    """Fills one pending snapshot from a local raw file and completes it.

    clients: the site's connections (``ebs`` for blocks).
    snapshots: the site's snapshots (their state, while completing).
    workers: PutSnapshotBlock calls in flight at once; AWS documents ~100
        connections for full speed, coldsnap uses 64, the site default is 16.
    write_zeros: send the payload's all-zero blocks too (an encrypted snapshot,
        whose unwritten blocks do not read as zeros).
    """

    def __init__(
        self, clients: AwsClients, snapshots: Snapshots, workers: int, *, write_zeros: bool = False
    ) -> None:
        self.clients = clients
        self.site_id = clients.site_id
        self.snapshots = snapshots
        self.workers = workers
        self.write_zeros = write_zeros

    def write(
        self, snapshot_id: str, path: Path, transfer: Transfer, parent: BlockMap | None = None
    ) -> Written:
        """Send what the journal lacks (of what differs from ``parent``, the block map
        of the snapshot this one was started from), complete the snapshot; return its
        manifest digest and, when the transfer names the payload's sha512, that
        sha512 as read (every byte, holes as zeros), checked against it."""
        journal = Journal.load(transfer, snapshot_id)
        mapped = transfer.disk_map
        size = path.stat().st_size if mapped is None else mapped.size
        # A mapped payload's sha512 is never known (it was never written out whole).
        payload = hashlib.sha512() if transfer.sha512 and mapped is None else None
        tally = _Tally(Manifest(size))
        with path.open("rb") as handle:
            fd = handle.fileno()
            blocks = scan_mapped(fd, mapped.extents()) if mapped else scan(fd, size, payload)
            if self.write_zeros:  # encrypted: a block never written reads as noise
                blocks = with_zero_blocks(blocks, size)
            try:
                self._send(blocks, size, tally, parent, journal, transfer)
            finally:
                if BUDGET.held == 0:  # no writer is sending: an idle daemon keeps no buffer
                    BUFFERS.drop()
        if payload is not None and payload.hexdigest() != transfer.sha512:
            raise IntegrityError(
                f"site {self.site_id}: {path.name} read as {size} bytes whose sha512 differs "
                "from the payload's recorded one; snapshot not completed"
            )
        transfer.progress(size)
        if not journal.completed:
            self._complete(snapshot_id, tally.written)
            faults.point("aws.snapshot_completed")
            journal.completed = True
            journal.save(
                transfer,
                blocks_total=len(tally.written),
                manifest_sha512=tally.manifest.hexdigest(),
                blocks=tally.kinds,
            )
        self._wait_completed(snapshot_id, transfer, size)
        log.info(
            "site %s: snapshot %s complete: %d blocks written (%s), %d PutSnapshotBlock calls",
            self.site_id,
            snapshot_id,
            len(tally.written),
            ", ".join(f"{n} {kind}" for kind, n in tally.kinds.items() if n),
            journal.blocks_put,
        )
        return Written(
            tally.manifest.hexdigest(),
            payload.hexdigest() if payload else None,
            BlockMap(size, tally.blocks),
            tally.kinds,
        )

    def _send(
        self,
        blocks: Iterator[Block],
        size: int,
        tally: _Tally,
        parent: BlockMap | None,
        journal: Journal,
        transfer: Transfer,
    ) -> None:
        inflight: dict[Future[None], int] = {}
        saved = time.monotonic()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="ebs-block") as pool:
            try:
                for planned in plan(blocks, parent):
                    block = planned.block
                    tally.kinds[planned.kind.value] += 1
                    # The manifest and block map list data blocks only.
                    if planned.holds_data and not is_zero(block):
                        tally.manifest.add(block.index, block.sha256)
                        tally.blocks[block.index] = block.sha256
                    if planned.send:
                        tally.written.append(block.sha256)
                    if planned.send and block.index not in journal.sent:
                        window = self.workers + READ_AHEAD_BLOCKS
                        while len(inflight) >= window:
                            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                            _settle(done, inflight, journal)
                        transfer.pace(BLOCK_SIZE)
                        self._hold(window, inflight, journal, transfer, block.index, size)
                        try:
                            future = pool.submit(self._put, journal.snapshot_id, block)
                        except BaseException:
                            BUDGET.give()
                            raise
                        future.add_done_callback(BUDGET.give)
                        inflight[future] = block.index
                    # Progress is the offset below which every block has landed.
                    done_below = min(inflight.values(), default=block.index + 1)
                    transfer.progress(min(size, done_below * BLOCK_SIZE))
                    if time.monotonic() - saved >= JOURNAL_INTERVAL:
                        journal.save(transfer)
                        saved = time.monotonic()
                while inflight:
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    _settle(done, inflight, journal)
            except BaseException as exc:
                # Let the blocks already on the wire land and journal them, so a
                # resumed run does not send them again.
                for future in inflight:
                    future.cancel()
                _settle(wait(inflight).done, inflight, journal, quiet=True)
                journal.save(transfer)
                if isinstance(exc, PermanentError):
                    self._explain_dead_snapshot(journal.snapshot_id)
                raise
        journal.save(
            transfer,
            blocks_total=len(tally.written),
            manifest_sha512=tally.manifest.hexdigest(),
            blocks=tally.kinds,
        )

    def _hold(
        self,
        window: int,
        inflight: dict[Future[None], int],
        journal: Journal,
        transfer: Transfer,
        index: int,
        size: int,
    ) -> None:
        """Wait for room in the daemon's block budget, a checkpoint every wait."""
        while not BUDGET.take(window, len(inflight), BUDGET_WAIT_SECONDS):
            _settle({f for f in inflight if f.done()}, inflight, journal)
            transfer.progress(min(size, min(inflight.values(), default=index) * BLOCK_SIZE))

    def _put(self, snapshot_id: str, block: Block) -> None:
        with translated(self.site_id, f"put block {block.index} of snapshot {snapshot_id}"):
            self.clients.ebs.put_snapshot_block(
                SnapshotId=snapshot_id,
                BlockIndex=block.index,
                BlockData=block.data,
                DataLength=BLOCK_SIZE,
                Checksum=block.checksum,
                ChecksumAlgorithm="SHA256",
            )
        BUFFERS.give(block.data, in_use=BUDGET.held)  # this block still counts there
        # Landed at AWS, not yet in the journal: a resumed run sends it again.
        faults.point("aws.block_sent", amount=(block.index + 1) * BLOCK_SIZE)

    def _complete(self, snapshot_id: str, digests: list[bytes]) -> None:
        try:
            with translated(self.site_id, f"complete snapshot {snapshot_id}"):
                self.clients.ebs.complete_snapshot(
                    SnapshotId=snapshot_id,
                    ChangedBlocksCount=len(digests),
                    Checksum=linear_checksum(digests),
                    ChecksumAlgorithm="SHA256",
                    ChecksumAggregationMethod="LINEAR",
                )
        except PermanentError:
            # A crash right after an accepted CompleteSnapshot leaves the journal
            # saying "not completed"; AWS then refuses a second one.
            if self.snapshots.state(snapshot_id) != "completed":
                raise

    def _wait_completed(self, snapshot_id: str, transfer: Transfer, size: int) -> None:
        def completed() -> bool | None:
            state = self.snapshots.state(snapshot_id)
            if state == "completed":
                return True
            if state != "pending":
                raise PermanentError(
                    f"site {self.site_id}: snapshot {snapshot_id} is {state} after completion"
                )
            return None

        # Minutes with no byte moving, each poll bounded by the read timeout.
        with stall.waiting():
            poll(completed, COMPLETION_BACKOFF, between=lambda: transfer.progress(size))

    def _explain_dead_snapshot(self, snapshot_id: str) -> None:
        """A snapshot that timed out (no write for its Timeout) refuses every block:
        retry, and the uploading state replaces the dead snapshot with a new one."""
        try:
            state = self.snapshots.state(snapshot_id)
        except Exception:  # the original error is the one to report
            return
        if state == "error":
            raise TransientError(
                f"site {self.site_id}: snapshot {snapshot_id} went into the error state "
                "(it expires when nothing is written for its timeout); starting a new one"
            )


def _settle(
    done: set[Future[None]],
    inflight: dict[Future[None], int],
    journal: Journal,
    *,
    quiet: bool = False,
) -> None:
    """Journal the blocks whose PUT was answered; raise the first failure unless quiet."""
    error: BaseException | None = None
    for future in done:
        index = inflight.pop(future)
        if future.cancelled():
            continue
        failure = future.exception()
        if failure is None:
            journal.sent.add(index)
            journal.blocks_put += 1
        elif error is None:
            error = failure
    if error is not None and not quiet:
        raise error
