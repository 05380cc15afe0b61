"""The one poll-with-backoff helper: delays grow and cap, answers end it, deadlines hold."""

from __future__ import annotations

from migratio.polling import Backoff, poll


def test_delays_grow_by_the_factor_and_stop_at_the_longest() -> None:
    delays = Backoff(first=0.5, factor=2, longest=3).delays()
    assert [next(delays) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_poll_returns_the_first_answer_and_reports_between_waits() -> None:
    answers = iter([None, None, "ready"])
    waited: list[float] = []
    reports: list[int] = []
    found = poll(
        lambda: next(answers),
        Backoff(first=1, factor=2, longest=10),
        between=lambda: reports.append(1),
        wait=waited.append,
    )
    assert found == "ready" and waited == [1, 2] and len(reports) == 2


def test_poll_gives_up_at_the_deadline() -> None:
    calls: list[int] = []

    def never() -> None:
        calls.append(1)

    assert poll(never, Backoff(first=0.01, factor=1, longest=0.01), timeout=0.05) is None
    assert 2 <= len(calls) <= 10
