"""Image safety and qemu-img wrappers against real images made by qemu-img: no mocks."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from migratio import qemu, safety
from migratio.errors import PermanentError, UnsafeImage

# One worker makes the images (about a dozen qemu-img runs) and runs every test here.
pytestmark = pytest.mark.xdist_group("safety-images")

MIB = 1 << 20
CHUNK_SIZES = [4096, MIB]


def run_qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def received_until_refused(chunks: Iterable[bytes], declared: str) -> tuple[list[bytes], str]:
    """What a destination got from guard_stream before it raised, and why it raised."""
    received: list[bytes] = []
    with pytest.raises(UnsafeImage) as refused:
        for chunk in safety.guard_stream(chunks, declared):
            received.append(chunk)
    return received, str(refused.value)


def streamed_vmdk_with_footer(path: Path, raw: Path) -> Path:
    """A streamOptimized VMDK whose grain directory is found through its footer.

    qemu-img writes streamOptimized without a footer; VMware's writers put the grain
    directory at the end and point to a footer, the form whose last bytes oslo checks.
    """
    plain = path.with_name("plain-stream.vmdk")
    run_qemu_img(
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        str(raw),
        str(plain),
    )
    data = bytearray(plain.read_bytes())
    header = bytes(data[:512])
    data[56:64] = struct.pack("<Q", 0xFFFFFFFFFFFFFFFF)  # gdOffset: "see the footer"
    footer_marker = struct.pack("<QII", 1, 0, 3) + bytes(496)
    end_of_stream = bytes(512)
    path.write_bytes(bytes(data) + footer_marker + header + end_of_stream)
    plain.unlink()
    return path


def mbr_disk(path: Path, size: int = 4 * MIB) -> Path:
    """A raw disk with one Linux partition in an MBR, as `fdisk` would leave it."""
    sector = bytearray(os.urandom(446)) + bytes(66)
    sector[446:462] = struct.pack("<B3BB3BII", 0x80, 0, 33, 0, 0x83, 0, 0, 0, 2048, 4096)
    sector[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(sector) + os.urandom(size - 512))
    return path


def hybrid_iso(path: Path, size: int = 4 * MIB) -> Path:
    """An ISO 9660 image that also boots as a disk (isohybrid): both iso and gpt match."""
    data = bytearray(mbr_disk(path, size).read_bytes())
    data[32768:32774] = b"\x01CD001"
    path.write_bytes(bytes(data))
    return path


def vhdx_with_far_metadata(path: Path, metadata_offset: int) -> Path:
    """A VHDX whose region table sends the metadata region past safety.HEADER_CAP."""
    run_qemu_img("create", "-f", "vhdx", str(path), "16M")
    data = bytearray(path.read_bytes())
    metadata_guid = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
    entry = data.index(metadata_guid, 192 * 1024)
    data[entry + 16 : entry + 24] = struct.pack("<Q", metadata_offset)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every image the tests need, made once."""
    directory = tmp_path_factory.mktemp("images")
    raw = random_file(directory / "good.raw", 2 * MIB)
    run_qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(directory / "good.qcow2"))
    run_qemu_img(
        "create",
        "-f",
        "qcow2",
        "-b",
        "/etc/hostname",
        "-F",
        "raw",
        str(directory / "evil.qcow2"),
        "16M",
    )
    run_qemu_img("create", "-f", "raw", str(directory / "outside.raw"), "16M")
    run_qemu_img(
        "create",
        "-f",
        "qcow2",
        "-o",
        f"data_file={directory / 'outside.raw'}",
        str(directory / "datafile.qcow2"),
        "16M",
    )
    run_qemu_img(
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        str(directory / "flat.vmdk"),
        "16M",
    )
    descriptor = (directory / "flat.vmdk").read_text()
    (directory / "host-extent.vmdk").write_text(
        descriptor.replace('"monolithicFlat"', '"monolithicSparse"').replace(
            'FLAT "flat-flat.vmdk" 0', 'SPARSE "/etc/hostname"'
        )
    )
    (directory / "relative-extent.vmdk").write_text(
        descriptor.replace('"monolithicFlat"', '"monolithicSparse"').replace(
            'FLAT "flat-flat.vmdk" 0', 'SPARSE "hostname"'
        )
    )
    streamed_vmdk_with_footer(directory / "footer.vmdk", raw)
    for fmt, options in [
        ("vmdk", "subformat=monolithicSparse"),
        ("vpc", "subformat=dynamic"),
        ("vhdx", "subformat=dynamic"),
        ("vdi", "static=off"),
    ]:
        run_qemu_img(
            "convert",
            "-f",
            "raw",
            "-O",
            fmt,
            "-o",
            options,
            str(raw),
            str(directory / f"good.{fmt}"),
        )
    mbr_disk(directory / "mbr.raw")
    hybrid_iso(directory / "hybrid.iso")
    return directory


# --- check_file, probe_stream, guard_stream on good images -------------------------


@pytest.mark.parametrize(
    ("name", "declared", "detected"),
    [
        ("good.raw", "raw", "raw"),
        ("good.qcow2", "qcow2", "qcow2"),
        ("good.vmdk", "vmdk", "vmdk"),
        ("footer.vmdk", "vmdk", "vmdk"),
        ("good.vpc", "vhd", "vhd"),
        ("good.vhdx", "vhdx", "vhdx"),
        ("good.vdi", "vdi", "vdi"),
        ("mbr.raw", "raw", "gpt"),
        ("mbr.raw", "ami", "gpt"),
        ("good.raw", "aki", "raw"),
        ("hybrid.iso", "iso", "iso"),
    ],
)
def test_truthfully_declared_images_pass(
    images: Path, name: str, declared: str, detected: str
) -> None:
    data = (images / name).read_bytes()
    assert safety.check_file(images / name, declared) == detected
    assert safety.probe_stream(chunks_of(data, MIB), declared) == detected
    for size in CHUNK_SIZES:
        sent = list(chunks_of(data, size))
        assert list(safety.guard_stream(iter(sent), declared)) == sent


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_guard_stream_passes_a_good_qcow2_unchanged(images: Path, size: int) -> None:
    data = (images / "good.qcow2").read_bytes()
    out = b"".join(safety.guard_stream(chunks_of(data, size), "qcow2"))
    assert sha512(out) == sha512(data)
    assert out == data


def test_probe_stream_reads_only_the_head(images: Path) -> None:
    data = (images / "good.qcow2").read_bytes()
    consumed = 0

    def counted() -> Iterator[bytes]:
        nonlocal consumed
        for chunk in chunks_of(data, 4096):
            consumed += len(chunk)
            yield chunk

    assert safety.probe_stream(counted(), "qcow2") == "qcow2"
    assert consumed == safety.FEED_UNIT < len(data)


@pytest.mark.parametrize("length", [0, 1, 100, 511, 700, 40_000])
def test_a_raw_stream_shorter_than_any_header_passes(length: int) -> None:
    data = os.urandom(length)
    assert safety.probe_stream(chunks_of(data, 64), "raw") == "raw"
    assert b"".join(safety.guard_stream(chunks_of(data, 64), "raw")) == data


# --- refusals ----------------------------------------------------------------------

REFUSALS = [
    ("evil.qcow2", "qcow2", "qcow2 image has a backing file"),
    ("datafile.qcow2", "qcow2", "qcow2 image has an external data file"),
    ("good.qcow2", "raw", "declared raw but the bytes are qcow2"),
    ("evil.qcow2", "raw", "declared raw but the bytes are qcow2"),
    ("good.qcow2", "ami", "declared ami but the bytes are qcow2"),
    ("good.raw", "qcow2", "declared qcow2 but the bytes are raw"),
    ("good.vmdk", "raw", "declared raw but the bytes are vmdk"),
    ("good.vhdx", "raw", "declared raw but the bytes are vhdx"),
    ("good.vpc", "raw", "declared raw but the bytes are vhd"),
    ("good.vdi", "raw", "declared raw but the bytes are vdi"),
    ("flat.vmdk", "vmdk", "vmdk image is a bare descriptor"),
    ("host-extent.vmdk", "vmdk", "vmdk image is a bare descriptor"),
    ("relative-extent.vmdk", "vmdk", "vmdk image is a bare descriptor"),
    ("hybrid.iso", "raw", "declared raw but the bytes match gpt and iso"),
    ("mbr.raw", "iso", "declared iso but the bytes are gpt"),
    ("good.raw", "ploop", "declared format 'ploop' cannot be inspected"),
]


@pytest.mark.parametrize(("name", "declared", "reason"), REFUSALS)
def test_unsafe_images_are_refused_by_all_three(
    images: Path, name: str, declared: str, reason: str
) -> None:
    data = (images / name).read_bytes()
    with pytest.raises(UnsafeImage, match=re.escape(reason)):
        safety.check_file(images / name, declared)
    with pytest.raises(UnsafeImage, match=re.escape(reason)):
        safety.probe_stream(chunks_of(data, 4096), declared)
    for size in CHUNK_SIZES:
        received, why = received_until_refused(chunks_of(data, size), declared)
        assert received == [], f"{len(received)} chunks left before the refusal"
        assert reason in why


def test_backing_file_refused_even_one_byte_at_a_time(images: Path) -> None:
    data = (images / "evil.qcow2").read_bytes()
    received, why = received_until_refused(chunks_of(data, 1), "qcow2")
    assert received == []
    assert why == "qcow2 image has a backing file"


def test_oslo_alone_refuses_a_host_extent_but_not_a_relative_one(images: Path) -> None:
    """Why the bare-descriptor rule exists: oslo only refuses extents with a '/'."""
    from oslo_utils.imageutils import format_inspector

    inspector = format_inspector.detect_file_format(str(images / "host-extent.vmdk"))
    assert inspector is not None
    with pytest.raises(format_inspector.SafetyCheckFailed):
        inspector.safety_check()
    inspector = format_inspector.detect_file_format(str(images / "relative-extent.vmdk"))
    assert inspector is not None
    inspector.safety_check()


def test_unknown_declared_format_is_refused_before_reading(images: Path) -> None:
    def untouchable() -> Iterator[bytes]:
        raise AssertionError("the stream was read")
        yield b""

    with pytest.raises(UnsafeImage, match="cannot be inspected"):
        list(safety.guard_stream(untouchable(), "ploop"))


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_a_bad_footer_is_refused_before_the_last_chunk(images: Path, size: int) -> None:
    data = bytearray((images / "footer.vmdk").read_bytes())
    data[-1] = 1  # the end-of-stream marker must be all zeros
    sent = list(chunks_of(bytes(data), size))
    received, why = received_until_refused(iter(sent), "vmdk")
    assert "End-of-stream marker is invalid" in why
    assert received == sent[:-1], "all but the held-back last chunk went out"
    # The header alone is fine, so a probe passes; a file check reads the tail.
    assert safety.probe_stream(iter(sent), "vmdk") == "vmdk"
    bad = images / "bad-footer.vmdk"
    bad.write_bytes(bytes(data))
    with pytest.raises(UnsafeImage, match="End-of-stream marker is invalid"):
        safety.check_file(bad, "vmdk")


def test_headers_beyond_the_cap_are_refused_without_yielding(images: Path) -> None:
    far = vhdx_with_far_metadata(images / "far.vhdx", 40 * MIB)
    data = far.read_bytes()
    padded = data + bytes(48 * MIB - len(data))
    consumed = 0

    def counted() -> Iterator[bytes]:
        nonlocal consumed
        for chunk in chunks_of(padded, MIB):
            consumed += len(chunk)
            yield chunk

    received, why = received_until_refused(counted(), "vhdx")
    assert received == []
    assert "headers do not fit" in why
    assert consumed == safety.HEADER_CAP


# --- throughput ----------------------------------------------------------------------


def _seconds(consume: Callable[[], object]) -> float:
    start = time.perf_counter()
    consume()
    return time.perf_counter() - start


def test_guard_stream_costs_little_over_plain_iteration() -> None:
    """1 GiB in 1 MiB chunks: measured +4 ms over plain iteration (InspectWrapper: +17 ms)."""
    block = os.urandom(MIB)

    def gib() -> Iterator[bytes]:
        for _ in range(1024):
            yield block

    plain = _seconds(lambda: sum(len(c) for c in gib()))
    guarded = _seconds(lambda: sum(len(c) for c in safety.guard_stream(gib(), "raw")))
    assert guarded - plain < 0.5, f"plain {plain:.3f} s, guarded {guarded:.3f} s"


# --- qemu-img wrappers -----------------------------------------------------------------


def test_convert_matches_a_hand_run_conversion_and_leaves_no_temp_file(
    images: Path, tmp_path: Path
) -> None:
    source = tmp_path / "half-zero.qcow2"
    raw = random_file(tmp_path / "half-zero.raw", 4 * MIB)
    with raw.open("r+b") as handle:
        handle.truncate(12 * MIB)
    run_qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(source))
    by_hand = tmp_path / "by-hand.raw"
    run_qemu_img("convert", "-f", "qcow2", "-O", "raw", str(source), str(by_hand))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "converted.raw"

    qemu.convert(source, "qcow2", target, "raw")

    assert sha512(target.read_bytes()) == sha512(by_hand.read_bytes())
    assert sorted(p.name for p in out_dir.iterdir()) == ["converted.raw"]
    stat = target.stat()
    assert stat.st_size == 12 * MIB
    assert stat.st_blocks * 512 < 6 * MIB, "the zero half should be a hole"


def test_convert_refuses_a_backing_file_and_writes_nothing(images: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsafeImage, match="backing file: '/etc/hostname'"):
        qemu.convert(images / "evil.qcow2", "qcow2", tmp_path / "out.raw", "raw")
    assert list(tmp_path.iterdir()) == []


def test_convert_refuses_a_truncated_qcow2_and_writes_nothing(images: Path, tmp_path: Path) -> None:
    """qemu-img convert reads the missing clusters as zeros and exits 0."""
    whole = (images / "good.qcow2").read_bytes()
    truncated = tmp_path / "in" / "cut.qcow2"
    truncated.parent.mkdir()
    truncated.write_bytes(whole[: len(whole) // 3])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PermanentError, match=r"^qcow2 image is damaged \(qemu-img check\): "):
        qemu.convert(truncated, "qcow2", out / "out.raw", "raw")
    assert list(out.iterdir()) == []
    qemu.convert(images / "good.qcow2", "qcow2", out / "whole.raw", "raw")
    assert (out / "whole.raw").read_bytes() == (images / "good.raw").read_bytes()


def test_convert_failure_is_permanent_and_cleans_up(images: Path, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"qemu-img: .*Image is not in qcow2 format"):
        qemu.convert(images / "good.raw", "qcow2", tmp_path / "out.raw", "raw")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "fmt", "reason"),
    [
        ("evil.qcow2", "qcow2", "qcow2 image has a backing file: '/etc/hostname'"),
        ("datafile.qcow2", "qcow2", "qcow2 image has an external data file"),
        ("flat.vmdk", "vmdk", "vmdk image of type 'monolithicFlat' keeps its data in other"),
    ],
)
def test_info_reports_what_check_info_safe_refuses(
    images: Path, name: str, fmt: str, reason: str
) -> None:
    described = qemu.info(images / name, fmt)
    with pytest.raises(UnsafeImage, match=re.escape(reason)):
        qemu.check_info_safe(described)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("good.qcow2", "qcow2"), ("good.vpc", "vhd"), ("footer.vmdk", "vmdk"), ("mbr.raw", "gpt")],
)
def test_info_on_good_images(images: Path, name: str, fmt: str) -> None:
    described = qemu.info(images / name, fmt)
    qemu.check_info_safe(described)
    assert described["virtual-size"] > 0


def test_info_error_carries_qemu_img_first_stderr_line(images: Path) -> None:
    with pytest.raises(PermanentError) as failed:
        qemu.info(images / "good.raw", "qcow2")
    message = str(failed.value)
    assert message.startswith("qemu-img: Could not open")
    assert "\n" not in message


def test_info_refuses_formats_that_are_protocols(images: Path) -> None:
    with pytest.raises(PermanentError, match="refusing to let qemu-img open format 'nbd'"):
        qemu.info(images / "good.raw", "nbd")


def test_missing_qemu_img_names_the_debian_package(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("setpriv", "prlimit"):  # what qemu-img runs under is there
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(PermanentError, match=r"qemu-img not found.*qemu-utils"):
        qemu.info(images / "good.qcow2", "qcow2")
    with pytest.raises(PermanentError, match=r"qemu-img not found.*qemu-utils"):
        qemu.convert(images / "good.qcow2", "qcow2", tmp_path / "out.raw", "raw")
