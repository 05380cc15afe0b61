"""The secrets grep (R6) finds what is planted: a grep that cannot fail proves nothing."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import yaml
from sqlalchemy import create_engine

from tests.support import secrets_grep

PASSWORD = "Zq8-planted-keystone-password"
SERVICE_PASSWORD = "planted-glance-service-password"
KEY_ID = "AKIAPLANTEDKEYID2345"
SECRET_KEY = "pLaNtEd/SeCrEt+aCcEsSkEy0123456789abcdEF"
KEY_LINE = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"
TOKEN = "gAAAAABnPlAnTeDtOkEnAbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


def fake_bed(directory: Path) -> Path:
    """A bed directory laid out as testbed_lib writes it, with known secrets."""
    bed = directory / "bed"
    (bed / "glance-site-a").mkdir(parents=True)
    (bed / "aws").mkdir()
    (bed / "sshd").mkdir()
    (bed / "clouds.yaml").write_text(
        yaml.safe_dump({"clouds": {"site-a": {"auth": {"password": PASSWORD}}}})
    )
    (bed / "glance-site-a" / "glance-api.conf").write_text(
        f"[keystone_authtoken]\nusername = glance\npassword = {SERVICE_PASSWORD}\n"
    )
    (bed / "aws" / "credentials").write_text(
        f"[p]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    (bed / "sshd" / "client_ed25519_key").write_text(
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_LINE}\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    return bed


def test_the_bed_secrets_are_all_collected(tmp_path: Path) -> None:
    found = secrets_grep.bed_secrets(fake_bed(tmp_path))
    assert set(found.values()) == {
        s.encode() for s in (PASSWORD, SERVICE_PASSWORD, KEY_ID, SECRET_KEY, KEY_LINE)
    }


def test_planted_secrets_are_found_in_logs_ledgers_argv_and_sql(tmp_path: Path) -> None:
    bed = fake_bed(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "daemon.log").write_text(f"INFO auth with {PASSWORD} ok\n")
    (run / "clean.log").write_text("INFO nothing to see\n" * 1000)
    (run / "child-argv.txt").write_text(f"ssh\0-i\0{KEY_LINE}\n")
    (run / "feedback.json").write_text(f'{{"token": "{TOKEN}"}}')
    ledger = run / "ledger.sqlite"
    with sqlite3.connect(ledger) as db:
        db.execute("CREATE TABLE migrations (id TEXT, last_error TEXT)")
        db.execute("INSERT INTO migrations VALUES ('m-1', ?)", (f"refused key {SECRET_KEY}",))
    (run / "disk.qcow2").write_bytes(PASSWORD.encode())  # an image, not text: not read

    scan = secrets_grep.Scan(secrets_grep.bed_secrets(bed))
    scan.files(secrets_grep.text_files(tmp_path, skip=[bed]))
    engine = create_engine(f"sqlite:///{ledger}")
    with engine.connect() as connection:
        scan.sql(connection, "ledger")
    engine.dispose()

    # The session's own grep reads every test's files: leave no planted token behind.
    shutil.rmtree(run)
    hits = {(hit.secret, Path(hit.place).name) for hit in scan.hits}
    assert hits == {
        ("clouds.yaml site-a password", "daemon.log"),
        ("client_ed25519_key line 1", "child-argv.txt"),
        (f"a Keystone token ({TOKEN[:8]}...)", "feedback.json"),
        ("AWS aws_secret_access_key", "ledger.sqlite"),
        ("AWS aws_secret_access_key", "ledger table migrations"),
    }
    assert scan.places == 5 + 1  # four text files, the SQLite file, one table
    assert scan.bytes_scanned > 20_000
    assert PASSWORD not in secrets_grep.summary(scan)


def test_nothing_planted_nothing_found(tmp_path: Path) -> None:
    bed = fake_bed(tmp_path)
    (tmp_path / "daemon.log").write_text("X-Auth-Token: ***\naws_secret_access_key = ***\n")
    scan = secrets_grep.Scan(secrets_grep.bed_secrets(bed))
    scan.files(secrets_grep.text_files(tmp_path, skip=[bed]))
    assert (scan.hits, scan.places) == ([], 1)
