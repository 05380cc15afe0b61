"""What a check answers: ok, warn or fail, and why, on one line."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from migratio.text import one_line

# A detail is one line an operator reads; a cloud's error page can be long.
DETAIL_LIMIT = 400


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but look: migratio may run into it later
    FAIL = "fail"  # migratio cannot work like this


@dataclass(frozen=True)
class Verdict:
    """What one check found. ``halts``: the later checks of the same site need
    what this one could not establish, so they are not run (a failure always halts
    a gate check)."""

    status: Status
    detail: str
    halts: bool = False


def ok(detail: str) -> Verdict:
    return Verdict(Status.OK, detail)


def warn(detail: str, *, halts: bool = False) -> Verdict:
    return Verdict(Status.WARN, detail, halts)


def fail(detail: str) -> Verdict:
    return Verdict(Status.FAIL, detail)


@dataclass(frozen=True)
class Check:
    """One thing to check: its name as operators read it and the function that
    checks it. A failed ``gate`` stops the rest of its chain (no login without a
    trusted host key); a failed non-gate check does not (one missing permission
    says nothing about the next)."""

    name: str
    run: Callable[[], Verdict]
    gate: bool = True


@dataclass(frozen=True)
class CheckResult:
    """A check's verdict as reported: ``--json`` prints ``as_dict`` of each."""

    check: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status.value, "detail": self.detail}

    def line(self) -> str:
        return f"{self.status.value:<4}  {self.check}: {self.detail}"


def result(check: str, verdict: Verdict) -> CheckResult:
    return CheckResult(check, verdict.status, one_line(verdict.detail, DETAIL_LIMIT))


def scrubbed(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret in it replaced by ``***``: for messages of
    libraries that may quote a URL with its password."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def passed(results: Iterable[CheckResult]) -> bool:
    """True unless a check failed (warnings pass)."""
    return all(item.status is not Status.FAIL for item in results)
