"""Fault points: inert unless a test sets MIGRATIO_FAULTS, then exactly what it says."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from migratio import faults
from migratio.errors import TransientError


@pytest.fixture
def rules(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    def set_rules(spec: str) -> None:
        monkeypatch.setenv(faults.ENVIRONMENT_VARIABLE, spec)
        faults._rules.cache_clear()

    yield set_rules
    monkeypatch.delenv(faults.ENVIRONMENT_VARIABLE, raising=False)
    faults._rules.cache_clear()


def test_points_do_nothing_unless_a_rule_names_them(rules: Callable[[str], None]) -> None:
    faults.point("transition.after_commit", "uploading")
    rules("transition.after_commit.exporting=fail")
    faults.point("transition.after_commit", "uploading")
    faults.point("intake.after_move")


def test_a_qualified_rule_fails_only_its_state(rules: Callable[[str], None]) -> None:
    rules("transition.before_commit.uploading=fail")
    faults.point("transition.before_commit", "exporting")
    with pytest.raises(
        TransientError, match=r"fault injected at transition\.before_commit\.uploading"
    ):
        faults.point("transition.before_commit", "uploading")


def test_a_threshold_waits_for_the_amount(rules: Callable[[str], None]) -> None:
    rules("transfer.bytes=fail@1000")
    faults.point("transfer.bytes", amount=999)
    with pytest.raises(TransientError):
        faults.point("transfer.bytes", amount=1000)


def test_a_pause_ends_early_when_stopping(rules: Callable[[str], None]) -> None:
    rules("intake.after_move=pause:30")
    stopping = threading.Event()
    threading.Timer(0.1, stopping.set).start()
    started = time.monotonic()
    faults.point("intake.after_move", stopping=stopping)
    assert time.monotonic() - started < 5


def test_a_crash_kills_the_process_at_once() -> None:
    code = "from migratio import faults; faults.point('transfer.bytes', amount=5); print('alive')"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={faults.ENVIRONMENT_VARIABLE: "transfer.bytes=crash@5", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == -9 and "alive" not in done.stdout


@pytest.mark.parametrize("spec", ["nowhere", "a=explode", "a=pause", "a=crash@x", "=fail"])
def test_a_rule_that_cannot_be_read_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="MIGRATIO_FAULTS"):
        faults.parse(spec)
