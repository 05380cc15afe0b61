"""The doctor's runner: timeouts, which failures stop a site's checks, order, secrets."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from migratio.doctor.result import Check, CheckResult, Status, Verdict, fail, ok, passed, warn
from migratio.doctor.runner import Chain, bounded, client_timeout, run_chain, run_chains
from migratio.errors import PermanentError


def _after(seconds: float, verdict: Verdict) -> Callable[[], Verdict]:
    """A check that answers ``verdict`` once ``seconds`` have passed."""

    def check() -> Verdict:
        time.sleep(seconds)
        return verdict

    return check


def _statuses(results: list[CheckResult]) -> list[tuple[str, str]]:
    return [(item.check, item.status.value) for item in results]


def test_a_silent_check_fails_after_the_timeout_and_stops_its_chain() -> None:
    release = threading.Event()
    chain = Chain(
        "site s",
        [
            Check("site s: hangs", lambda: ok("never") if release.wait(30) else ok("late")),
            Check("site s: next", lambda: ok("not reached"), gate=False),
        ],
    )
    started = time.monotonic()
    results = run_chain(chain, timeout=0.1)
    release.set()
    assert time.monotonic() - started < 5
    assert _statuses(results) == [("site s: hangs", "fail")]
    assert results[0].detail == "timed out after 0.1 s (1 later check of site s not run)"


def test_a_failed_gate_stops_the_chain_a_failed_permission_does_not() -> None:
    chain = Chain(
        "site s",
        [
            Check("a", lambda: ok("fine")),
            Check("b", lambda: fail("denied"), gate=False),
            Check("c", lambda: ok("fine")),
            Check("d", lambda: fail("broken")),
            Check("e", lambda: ok("never run")),
        ],
    )
    results = run_chain(chain, timeout=5)
    assert _statuses(results) == [("a", "ok"), ("b", "fail"), ("c", "ok"), ("d", "fail")]
    assert results[3].detail == "broken (1 later check of site s not run)"
    assert not passed(results)


def test_a_halting_warning_stops_the_chain_and_passes() -> None:
    chain = Chain(
        "site s",
        [Check("a", lambda: warn("cannot go on", halts=True)), Check("b", lambda: ok("x"))],
    )
    results = run_chain(chain, timeout=5)
    assert _statuses(results) == [("a", "warn")]
    assert passed(results)


def test_errors_become_failures_without_the_subject_twice() -> None:
    def typed() -> Verdict:
        raise PermanentError("site s: connect: refused")

    def unexpected() -> Verdict:
        raise KeyError("id")

    chain = Chain("site s", [Check("x", typed, gate=False), Check("y", unexpected, gate=False)])
    results = run_chain(chain, timeout=5)
    assert [item.detail for item in results] == [
        "connect: refused",
        "unexpected error: KeyError: 'id'",
    ]


def test_secrets_are_scrubbed_and_details_are_one_line() -> None:
    chain = Chain(
        "site s",
        [Check("x", lambda: fail("login with hunter2\nfailed"))],
        secrets=lambda: ["hunter2"],
    )
    assert run_chain(chain, timeout=5)[0].detail == "login with *** failed"


def test_chains_run_side_by_side_and_report_in_order() -> None:
    def slow(name: str) -> Check:
        return Check(name, _after(0.2, ok(name)))

    chains = [Chain(f"c{n}", [slow(f"c{n}")]) for n in range(5)]
    started = time.monotonic()
    results = run_chains(chains, timeout=5)
    assert time.monotonic() - started < 0.9  # one after another: 1 s
    assert [item.check for item in results] == [f"c{n}" for n in range(5)]


def test_close_runs_after_the_chain_but_not_after_a_timeout() -> None:
    closed: list[str] = []
    run_chain(Chain("a", [Check("a", lambda: ok("x"))], close=lambda: closed.append("a")), 5)
    run_chain(
        Chain("b", [Check("b", _after(2, ok("x")))], lambda: closed.append("b")),
        0.1,
    )
    assert closed == ["a"]


def test_bounded_returns_and_raises_what_the_function_does() -> None:
    assert bounded(lambda: 42, 5) == 42
    try:
        bounded(lambda: 1 / 0, 5)
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("no error")


def test_clients_wait_just_past_the_check() -> None:
    assert client_timeout(60, 20) == 21
    assert client_timeout(5, 20) == 5


def test_json_and_line_forms() -> None:
    item = CheckResult("redis", Status.WARN, "slow")
    assert item.as_dict() == {"check": "redis", "status": "warn", "detail": "slow"}
    assert item.line() == "warn  redis: slow"
