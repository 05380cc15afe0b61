"""The payload a destination receives, as seen from a running step.

Streams are read ahead in a thread, hashed once and guarded: the safety guard
holds back the last chunk until the whole image has been checked and its sha512
matched, so a destination never completes an unsafe or corrupt upload.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from migratio import metrics, safety
from migratio.checksums import Sha512Meter, file_chunks
from migratio.disk_map import DataRuns
from migratio.drivers.base import BaseVersion
from migratio.errors import PermanentError
from migratio.following import FollowedImage
from migratio.group_read import Follower, append_source, part_of
from migratio.prefetch import prefetched
from migratio.step import Step
from migratio.workspace import filling


class StepTransfer:
    """Implements ``drivers.base.Transfer`` for one uploading step."""

    def __init__(
        self, step: Step, base: BaseVersion | None = None, followed: FollowedImage | None = None
    ) -> None:
        self._step = step
        self.base = base
        self.meter = Sha512Meter()
        self._sent = metrics.PayloadMeter(step.migration)
        image = step.source_image
        self.disk_format = step.target_format
        self.sha512 = step.migration.payload_sha512
        self.size: int | None = step.migration.bytes_total
        # A member following the group's read streams; it never reads a finished file.
        staged = step.stages_payload and not step.follows_group_read
        self.path: Path | None = step.payload_file if staged else None
        self.disk_map: DataRuns | None = step.disk_map
        if followed is not None:  # the source, read while it downloads
            self.path, self.disk_map = followed.path, followed
        self._source_id = image.id
        self._streams: list[Generator[bytes, None, None]] = []
        self._followers: list[Follower] = []

    def chunks(self, offset: int = 0) -> Iterator[bytes]:
        """The payload from ``offset``, counted as sent as the destination takes it,
        within the bandwidth caps: of the destination, and of the source when the
        payload is streamed from it (not staged)."""
        migration = self._step.migration
        sites = [migration.dest_site]
        if not self._step.stages_payload:
            sites.insert(0, migration.source_site)
        paced = self._step.paced(self._payload(offset), *sites)
        return self._sent.stream(iter(paced), offset)

    def pace(self, amount: int) -> None:
        """For a destination that reads ``path`` itself: wait until ``amount`` more
        bytes may be sent within the destination's and the daemon's caps."""
        self._step.pace(amount, self._step.migration.dest_site)

    def _payload(self, offset: int) -> Iterator[bytes]:
        """From offset 0 the stream is hashed, verified and guarded end to end; a
        resumed stream (offset > 0) relies on the destination's own final check."""
        stream = self._stream(offset)
        self._streams.append(stream)
        return stream

    def close(self) -> None:
        """End every stream handed out, now rather than whenever it is collected:
        the source's response is closed and the read-ahead thread stopped."""
        streams, self._streams = self._streams, []
        for stream in streams:
            with suppress(ValueError):  # still running in another thread: it ends there
                stream.close()
        followers, self._followers = self._followers, []
        for follower in followers:
            follower.close(self._step.checkpoint)

    def _stream(self, offset: int) -> Generator[bytes, None, None]:
        step = self._step
        what = f"payload of migration {step.migration.id}"
        if self.disk_map is not None:
            # The staged file is an image, not the payload: only a destination
            # that reads it through the map (and never streams) gets one.
            raise PermanentError(f"{what} is read through a disk map, not streamed")
        if step.follows_group_read:
            follower = group_follower(step)
            self._followers.append(follower)
            if offset == 0 and self.sha512 and self.sha512 == step.source_image.sha512:
                # The group's writer checks the spool against this sha512 before it
                # is final; the last chunk waits for that, so no member hashes it again.
                chunks = self.meter.counting(follower.chunks(until_verified=True))
                yield from self._released(chunks)
                return
            yield from self._guarded(follower.chunks(offset), offset, what)
            return
        if step.stages_payload:
            yield from self._guarded(file_chunks(step.payload_file, offset=offset), offset, what)
            return
        with step.source.read(self._source_id, offset) as chunks:
            yield from self._guarded(chunks, offset, what)

    def _guarded(self, chunks: Iterator[bytes], offset: int, what: str) -> Iterator[bytes]:
        if offset:
            return self._step.tracked(prefetched(chunks), start=offset)
        return self._released(self.meter.verifying(chunks, self.sha512, what))

    def _released(self, checked: Iterator[bytes]) -> Iterator[bytes]:
        """``checked`` read ahead, its last chunk held back until it ends (its own
        verdict) and the safety guard's."""
        # Tracked last: progress (and the stall watchdog) counts what the destination
        # took, not what the guard holds back for its verdict.
        return self._step.tracked(safety.guard_stream(prefetched(checked), self.disk_format))

    @property
    def sent_sha512(self) -> str | None:
        """The sha512 of the payload, when all of it went through ``chunks(0)``."""
        return self.meter.hexdigest if self.meter.finished else None

    def progress(self, bytes_done: int) -> None:
        self._sent.reached(bytes_done)
        self._step.checkpoint(bytes_done)

    def load_state(self) -> dict[str, Any]:
        return dict(self._step.migration.transfer_state or {})

    def save_state(self, state: dict[str, Any]) -> None:
        self._step.record(transfer_state=state)

    def add_artifact(self, kind: str, ref: str) -> None:
        self._step.add_artifact(kind, ref, self._step.migration.dest_site)

    def keep_manifest(self, record_id: str, manifest: bytes) -> None:
        step = self._step
        step.ledger.keep_manifest(step.migration.id, step.owner, record_id, manifest)


def group_follower(step: Step) -> Follower:
    """A reader of the group's spool for ``step``; should no one be writing it,
    this step writes it in a thread at the source's pace (under the source's cap)."""
    image = step.source_image
    final = step.staged_source

    def start_writer(lock: IO[str], stop: threading.Event) -> threading.Thread:
        def write() -> None:
            try:
                with filling(part_of(final), image.size):
                    append_source(
                        final,
                        image.size,
                        image.sha512,
                        lambda offset: step.source.read(image.id, offset),
                        lambda chunks: step.paced(chunks, step.migration.source_site),
                        f"source image {image.id}",
                        stop,
                    )
            except BaseException as error:  # the follower raises it in the step
                follower.failed(error)
            finally:
                lock.close()

        writer = threading.Thread(target=write, name="group-writer", daemon=True)
        writer.start()
        return writer

    follower = Follower(
        final, image.size, start_writer, step.stop_if_signalled, step.watchdog.seconds
    )
    return follower
