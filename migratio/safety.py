"""Refuse image bytes that would make qemu-img read host files, before anyone uses them.

The CVE-2024-32498 class: a qcow2 naming a backing file or an external data file, a
VMDK descriptor naming extent files, or bytes of one format declared as another (a
"raw" image that is really a qcow2 gets probed as one later). We run oslo.utils'
format inspectors -- the ones Glance, Nova and Cinder use since that CVE -- over the
head of the image, decide there, and stop feeding them: their verdicts rest on fixed
header regions, and oslo's InspectWrapper costs 12-15 us per chunk whatever its size
(4-6 s per GiB at 4 KiB chunks). Only a format with an end-of-stream region (a
streamOptimized VMDK's footer) also needs the last bytes, which we keep aside.

Format names are oslo's: raw, qcow2, qed, vhd, vhdx, vmdk, vdi, iso, gpt, luks. "gpt"
is oslo's name for any raw disk starting with a partition table, MBR included.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from oslo_utils.imageutils import format_inspector as fi

from migratio.errors import UnsafeImage

# Why 1 MiB: oslo's VMDK inspector parses a text descriptor from the first chunk it is
# fed (up to 1 MiB - 1, qemu's own limit), and its VHDX inspector looks for the metadata
# region only in the chunk that completed the header. Feeding fixed 1 MiB units makes a
# verdict independent of how a caller happens to chunk its stream.
FEED_UNIT = 1 << 20

# The most a stream is held back while its header is undecided. Every oslo format
# decides within its first few MiB; past this we decide on what we have.
HEADER_CAP = 32 << 20

# A single-file (hosted sparse or streamOptimized) VMDK starts with this.
_SPARSE_VMDK_MAGIC = b"KDMV"

_RAW_DISK = frozenset({"raw", "gpt"})

# Declared format -> detected formats that satisfy it. ami/ari/aki are EC2-style raw
# disks, kernels and ramdisks with no header of their own, so they are held to what
# raw is held to (Nova accepts anything for them; a qcow2 called "ami" is still refused
# here). An ISO that is also a bootable disk (isohybrid) matches both iso and gpt;
# _accept allows that pair for a declared iso only.
_ACCEPTED: dict[str, frozenset[str]] = {name: frozenset({name}) for name in fi.ALL_FORMATS} | {
    "raw": _RAW_DISK,
    "ami": _RAW_DISK,
    "ari": _RAW_DISK,
    "aki": _RAW_DISK,
}

# oslo's check names turned into the reason an operator reads.
_REASONS = {
    ("qcow2", "backing_file"): "qcow2 image has a backing file",
    ("qcow2", "data_file"): "qcow2 image has an external data file",
    ("qed", "banned"): "qed images are refused (no safe way to check them)",
}


def check_file(path: Path, declared_format: str) -> str:
    """Inspect a staged file; return the detected format or raise UnsafeImage.

    Reads the head and, when the format needs it, the tail: never the whole file.
    """
    inspection = _Inspection(declared_format)
    with path.open("rb") as handle:
        while inspection.format is None and (unit := handle.read(FEED_UNIT)):
            inspection.add(unit)
        if inspection.format is not None and inspection.tail_needed:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(handle.tell(), size - inspection.tail_needed))
            inspection.add(handle.read())
    return inspection.finish()


def probe_stream(chunks: Iterable[bytes], declared_format: str) -> str:
    """Read only as far as the verdict on format and header safety; return the format.

    A streamOptimized VMDK's footer is not seen here; guard_stream checks it later.
    """
    inspection = _Inspection(declared_format)
    for chunk in chunks:
        inspection.add(chunk)
        if inspection.format is not None:
            return inspection.format
    return inspection.finish()


def guard_stream(chunks: Iterable[bytes], declared_format: str) -> Iterator[bytes]:
    """Pass the bytes through unchanged, refusing an unsafe image before it is whole.

    Nothing leaves until the header verdict (at most HEADER_CAP bytes held for it),
    and the last chunk leaves only after the full check at end of input, so a
    destination never receives a complete unsafe image. On UnsafeImage the caller
    must discard what the destination received.
    """
    inspection = _Inspection(declared_format)
    source = iter(chunks)
    head: list[bytes] = []
    for chunk in source:
        if chunk:
            head.append(chunk)
            inspection.add(chunk)
            if inspection.format is not None:
                break
    if inspection.format is None:
        inspection.finish()
        yield from head
        return
    held = head.pop()
    yield from head
    del head
    for chunk in source:
        if chunk:
            yield held
            held = chunk
            inspection.add(chunk)
    inspection.finish()
    yield held


class _Inspection:
    """One image's bytes as oslo's inspectors see them, and the verdict on them.

    Mirrors oslo's InspectWrapper (every inspector runs; any non-raw match wins; two
    matches are suspect), but decides as soon as every header region is complete
    and then stops feeding the inspectors.
    """

    def __init__(self, declared_format: str) -> None:
        self.declared = declared_format.lower()
        if self.declared not in _ACCEPTED:
            raise UnsafeImage(f"declared format {declared_format!r} cannot be inspected")
        self.format: str | None = None
        self.tail_needed = 0
        self._inspectors = [inspector() for inspector in fi.ALL_FORMATS.values()]
        self._raw = next(i for i in self._inspectors if i.NAME == "raw")
        self._errors: dict[fi.FileInspector, str] = {}
        self._fed = 0
        self._magic = b""
        self._unfed = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_size = 0

    def add(self, data: bytes) -> None:
        """Take the next bytes of the image, in order."""
        if self.format is not None:
            self._keep_tail(data)
            return
        if len(self._magic) < len(_SPARSE_VMDK_MAGIC):
            self._magic = (self._magic + data)[: len(_SPARSE_VMDK_MAGIC)]
        self._unfed += data
        while len(self._unfed) >= FEED_UNIT and self.format is None:
            unit = bytes(self._unfed[:FEED_UNIT])
            del self._unfed[:FEED_UNIT]
            self._feed(unit)
            if self._headers_complete() or self._fed >= HEADER_CAP:
                self._decide_header()
        if self.format is not None:
            leftover, self._unfed = bytes(self._unfed), bytearray()
            self._keep_tail(leftover)

    def finish(self) -> str:
        """End of input: the full check on everything oslo looks at; return the format."""
        if self.format is None:
            if self._unfed:
                self._feed(bytes(self._unfed))
                self._unfed = bytearray()
        elif self._tail_size:
            # The tail's absolute position is lost; end-of-stream regions only keep
            # the last bytes they are given, and every other region is complete.
            tail = b"".join(self._tail)[-self.tail_needed :]
            for inspector in self._live():
                if _end_regions(inspector):
                    self._eat(inspector, tail)
        for inspector in self._inspectors:
            inspector.finish()
        name, matched = self._verdict()
        if self.format is not None and name != self.format:
            raise UnsafeImage(f"bytes looked like {self.format} at the start but {name} at the end")
        for inspector in matched:
            _full_check(inspector)
        self.format = name
        return name

    def _feed(self, unit: bytes) -> None:
        self._fed += len(unit)
        for inspector in self._live():
            self._eat(inspector, unit)

    def _eat(self, inspector: fi.FileInspector, data: bytes) -> None:
        try:
            inspector.eat_chunk(data)
        except Exception as exc:
            # As in InspectWrapper: a parse error rules the format out. If that format
            # still claims the bytes, _claims refuses them.
            self._errors[inspector] = str(exc) or type(exc).__name__

    def _live(self) -> list[fi.FileInspector]:
        return [i for i in self._inspectors if i not in self._errors]

    def _headers_complete(self) -> bool:
        return all(_header_complete(i) for i in self._live() if i is not self._raw)

    def _decide_header(self) -> None:
        name, matched = self._verdict()
        for inspector in matched:
            if not _header_complete(inspector):
                raise UnsafeImage(
                    f"{inspector} image headers do not fit in the first {HEADER_CAP} bytes"
                )
            if inspector.complete:
                _full_check(inspector)
            elif isinstance(inspector, fi.VMDKInspector):
                # oslo runs no VMDK check before the footer (an end-of-stream region of
                # streamOptimized images) is in, but the check that matters -- extents
                # naming host files -- needs only the descriptor we already hold.
                _run_check(inspector, "descriptor", inspector.check_descriptor)
            self.tail_needed = max([self.tail_needed, *_end_regions(inspector).values()])
        self.format = name

    def _verdict(self) -> tuple[str, list[fi.FileInspector]]:
        """Which format the bytes are, as far as inspected, refused unless declared."""
        matched = [i for i in self._inspectors if i is not self._raw and self._claims(i)]
        names = sorted(str(i) for i in matched) or ["raw"]
        _accept(self.declared, names)
        if names == ["vmdk"] and self._magic != _SPARSE_VMDK_MAGIC:
            # oslo passes a text descriptor whose extents have no "/" in their names,
            # but such a file is only a pointer: qemu-img would read its data from
            # whatever sits beside it on our host.
            raise UnsafeImage(
                "vmdk image is a bare descriptor: its data would be read from other files"
            )
        if names == ["gpt", "iso"]:
            return "iso", matched
        return names[0], matched or [self._raw]

    def _claims(self, inspector: fi.FileInspector) -> bool:
        try:
            claims = bool(inspector.format_match)
        except Exception as exc:
            if inspector in self._errors:
                return False
            raise UnsafeImage(f"cannot tell whether the bytes are {inspector}: {exc}") from exc
        if claims and inspector in self._errors:
            raise UnsafeImage(f"{inspector} image header is malformed: {self._errors[inspector]}")
        return claims

    def _keep_tail(self, data: bytes) -> None:
        if not self.tail_needed or not data:
            return
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail_size - len(self._tail[0]) >= self.tail_needed:
            self._tail_size -= len(self._tail.popleft())


def _accept(declared: str, detected: list[str]) -> None:
    if len(detected) == 1 and detected[0] in _ACCEPTED[declared]:
        return
    if declared == "iso" and detected == ["gpt", "iso"]:
        return
    if len(detected) > 1:
        raise UnsafeImage(f"declared {declared} but the bytes match {' and '.join(detected)}")
    raise UnsafeImage(f"declared {declared} but the bytes are {detected[0]}")


def _end_regions(inspector: fi.FileInspector) -> dict[str, int]:
    """Regions that capture the last bytes of the stream, and their lengths."""
    regions = {name: inspector.region(name) for name in inspector.context_info}
    return {
        name: region.length
        for name, region in regions.items()
        if isinstance(region, fi.EndCaptureRegion)
    }


def _header_complete(inspector: fi.FileInspector) -> bool:
    ends = _end_regions(inspector)
    return all(
        inspector.region(name).complete for name in inspector.context_info if name not in ends
    )


def _full_check(inspector: fi.FileInspector) -> None:
    try:
        inspector.safety_check()
    except fi.SafetyCheckFailed as exc:
        raise UnsafeImage(_describe(str(inspector), exc.failures)) from exc
    except fi.ImageFormatError as exc:
        raise UnsafeImage(f"{inspector} image is incomplete or malformed: {exc}") from exc


def _run_check(inspector: fi.FileInspector, name: str, check: Callable[[], None]) -> None:
    try:
        fi.SafetyCheck(name, check)()
    except fi.SafetyViolation as exc:
        raise UnsafeImage(_describe(str(inspector), {name: exc})) from exc


def _describe(fmt: str, failures: dict[str, object]) -> str:
    reasons = [
        _REASONS.get((fmt, name)) or f"{fmt} image fails check {name}: {failure}"
        for name, failure in failures.items()
    ]
    return "; ".join(reasons)
