"""``migratio run``'s logging: formats, journald, levels per origin, migration
context, and secrets redacted whatever prints them."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from migratio import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("migratio").level)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    logging.getLogger("migratio").setLevel(saved[2])


def _configure(stream: io.StringIO, **options: str) -> None:
    logs.configure(stream=stream, environ={}, **options)


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_keep_their_classic_shape() -> None:
    out = io.StringIO()
    _configure(out)
    logging.getLogger("migratio.supervisor").info("supervisor %s starting", "h:1")
    line = out.getvalue().strip()
    date, clock, rest = line.split(" ", 2)
    assert len(date) == 10 and clock.count(":") == 2
    assert rest == "INFO MainThread migratio.supervisor: supervisor h:1 starting"


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_the_migration_context() -> None:
    out = io.StringIO()
    _configure(out, log_format="json")
    log = logging.getLogger("migratio.states.uploading")
    with logs.migration_context(
        migration="m-1", state="exporting", source_site="site-a", dest_site="site-b"
    ) as context:
        context["state"] = "uploading"
        log.info("sent %d bytes", 42)
    logging.getLogger("migratio.daemon").warning("no context", extra={"site": "site-c"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert set(first) == {
        "time", "level", "logger", "thread", "message",
        "migration", "state", "source_site", "dest_site",
    }  # fmt: skip
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert (first["level"], first["logger"], first["thread"]) == (
        "INFO",
        "migratio.states.uploading",
        "MainThread",
    )
    assert (first["message"], first["migration"], first["state"]) == (
        "sent 42 bytes",
        "m-1",
        "uploading",
    )
    assert (first["source_site"], first["dest_site"]) == ("site-a", "site-b")
    assert second["site"] == "site-c" and "migration" not in second
    assert third["exception"].startswith("Traceback") and "ValueError: boom" in third["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_context_belongs_to_its_thread_only() -> None:
    out = io.StringIO()
    _configure(out, log_format="json")
    log = logging.getLogger("migratio.supervisor")
    with logs.migration_context(migration="m-1", state="queued"):
        other = threading.Thread(target=lambda: log.info("elsewhere"), name="janitor")
        other.start()
        other.join()
    log.info("after")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [("migration" in record, record["thread"]) for record in records] == [
        (False, "janitor"),
        (False, "MainThread"),
    ]


@pytest.mark.usefixtures("restore_logging")
def test_libraries_stay_at_warning_unless_asked() -> None:
    out = io.StringIO()
    _configure(out, level="DEBUG")
    logging.getLogger("migratio.x").debug("ours")
    for name in ("keystoneauth.session", "botocore.endpoint", "urllib3.connectionpool", "paramiko"):
        logging.getLogger(name).info("theirs %s", name)
    logging.getLogger("transitions.core").warning("theirs warns")
    assert [line.split(": ", 1)[1] for line in out.getvalue().splitlines()] == [
        "ours",
        "theirs warns",
    ]
    out = io.StringIO()
    _configure(out, level="WARNING", library_level="DEBUG")
    logging.getLogger("migratio.x").info("ours")
    logging.getLogger("botocore.endpoint").debug("theirs")
    assert [line.split(": ", 1)[1] for line in out.getvalue().splitlines()] == ["theirs"]


@pytest.mark.usefixtures("restore_logging")
def test_configure_again_replaces_its_handler() -> None:
    out = io.StringIO()
    _configure(out)
    _configure(out, log_format="json")
    logging.getLogger("migratio").info("once")
    assert [json.loads(line)["message"] for line in out.getvalue().splitlines()] == ["once"]


@pytest.mark.usefixtures("restore_logging")
def test_under_journald_text_has_no_timestamp_and_a_priority(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w+") as stream:
        stat = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        assert logs.under_journald(stream, environ)
        assert not logs.under_journald(stream, {"JOURNAL_STREAM": f"{stat.st_dev}:1"})
        logs.configure(stream=stream, environ=environ)
        logging.getLogger("migratio.supervisor").warning("lease lost")
        try:
            raise RuntimeError("x")
        except RuntimeError:
            logging.getLogger("migratio.supervisor").exception("crashed")
        stream.flush()
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines[0] == "<4>WARNING MainThread migratio.supervisor: lease lost"
    assert lines[1] == "<3>ERROR MainThread migratio.supervisor: crashed"
    assert all(line.startswith("<3>") for line in lines[1:])


# ---- secrets ---------------------------------------------------------------------

FERNET = "gAAAAABmZ3x1Yk9hR0VwN2Zkc2lYb0xQbzR6Qm1yUWdLbWs2a0tGdmVqWjNvR3dyVjJ2c1p5"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----"
)

LEAKS = {
    # keystoneauth's curl line of a request
    f'REQ: curl -g -i -X GET http://k/v3 -H "X-Auth-Token: {FERNET}" -H "Accept: x"': FERNET,
    f"RESP: [201] X-Subject-Token: {FERNET} Vary: X-Auth-Token": FERNET,
    # botocore's request dict
    f"{{'headers': {{'Authorization': b'AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/2024/eu"
    "-west-1/ec2/aws4_request, SignedHeaders=host, Signature=ab12'}}": AWS_KEY_ID,
    f"aws_secret_access_key = {AWS_SECRET}": AWS_SECRET,
    f"key {AWS_SECRET} in the middle": AWS_SECRET,
    f"a presigned https://b.s3/k?X-Amz-Credential={AWS_KEY_ID}%2F2024&X-Amz-Signature=abc": (
        AWS_KEY_ID
    ),
    "redis at redis://:s3cr3t-pw@127.0.0.1:6379/0 unreachable": "s3cr3t-pw",
    "postgresql+psycopg://migratio:pg-pass@db/migratio": "pg-pass",
    '{"auth": {"identity": {"password": {"user": {"name": "admin", "password": "hunter2"}}}}}': (
        "hunter2"
    ),
    "{'password': 'hunter2', 'username': 'admin'}": "hunter2",
    f"loaded key {PEM} from file": "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAtruncated": "MIIEowIBAAKCAQEA",
    '{"token": {"methods": ["password"], "catalog": [{"endpoints": [{"url": "http://x"}]}]}}': (
        "http://x"
    ),
    'RESP BODY: {"catalog": [{"type": "image", "endpoints": []}], "x": 1}': '"image"',
}


@pytest.mark.parametrize("text, secret", list(LEAKS.items()))
def test_known_secret_shapes_are_redacted(text: str, secret: str) -> None:
    redacted = logs.redact(text)
    assert secret not in redacted
    assert "***" in redacted


def test_ordinary_lines_are_left_alone() -> None:
    sha1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    for text in (
        "migration 3f2a: exporting -> converting: source is qcow2, 67108864 bytes",
        f"sha1 {sha1}, md5 9e107d9d372bb6826bd81d3542a419d6",
        "redis at redis://127.0.0.1:6379/0 unreachable",
        "the token expired; re-authenticating",
        '{"catalog_size": 3, "x": "y"}',
    ):
        assert logs.redact(text) == text


@pytest.mark.usefixtures("restore_logging")
def test_the_filter_redacts_messages_arguments_and_tracebacks() -> None:
    out = io.StringIO()
    _configure(out, library_level="DEBUG")
    logging.getLogger("keystoneauth.session").debug('-H "X-Auth-Token: %s"', FERNET)
    try:
        raise RuntimeError(f"auth with {AWS_SECRET} refused")
    except RuntimeError:
        logging.getLogger("botocore").exception("failed for %s", AWS_KEY_ID)
    text = out.getvalue()
    for secret in (FERNET, AWS_SECRET, AWS_KEY_ID):
        assert secret not in text
    assert "X-Auth-Token: ***" in text and "RuntimeError: auth with *** refused" in text
