"""The state machine alone: legal paths pass, everything else is refused."""

from __future__ import annotations

import logging

import pytest

from migratio.errors import IllegalTransition
from migratio.machine import ACTIVE, TERMINAL, State, Trigger, next_state

HAPPY_PATH = [
    (State.QUEUED, Trigger.START, State.EXPORTING),
    (State.EXPORTING, Trigger.EXPORTED, State.CONVERTING),
    (State.CONVERTING, Trigger.CONVERTED, State.UPLOADING),
    (State.UPLOADING, Trigger.UPLOADED, State.REGISTERING),
    (State.REGISTERING, Trigger.REGISTERED, State.DONE),
]


@pytest.mark.parametrize(("current", "trigger", "expected"), HAPPY_PATH)
def test_happy_path(current: State, trigger: Trigger, expected: State) -> None:
    assert next_state(current, trigger) == expected


def test_dedup_skips_to_done_only_from_exporting() -> None:
    assert next_state("exporting", "found_copy") == State.DONE
    for state in set(State) - {State.EXPORTING}:
        with pytest.raises(IllegalTransition):
            next_state(state, "found_copy")


@pytest.mark.parametrize("state", ACTIVE)
def test_any_active_state_can_fail_or_cancel(state: State) -> None:
    assert next_state(state, "fail") == State.FAILED
    assert next_state(state, "cancel") == State.CANCELLED


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_only_requeue(state: State) -> None:
    for trigger in set(Trigger) - {Trigger.REQUEUE}:
        with pytest.raises(IllegalTransition):
            next_state(state, trigger)
    if state == State.DONE:
        with pytest.raises(IllegalTransition):
            next_state(state, "requeue")
    else:
        assert next_state(state, "requeue") == State.QUEUED


def test_skipping_a_state_is_refused() -> None:
    with pytest.raises(IllegalTransition):
        next_state("queued", "uploaded")
    with pytest.raises(IllegalTransition):
        next_state("exporting", "registered")
    with pytest.raises(IllegalTransition, match="unknown trigger"):
        next_state("queued", "teleport")


def test_the_machine_is_built_once_and_quiet_at_info(caplog: pytest.LogCaptureFixture) -> None:
    from migratio import machine

    built = machine._machine()
    with caplog.at_level(logging.INFO):
        assert next_state("queued", Trigger.START) is State.EXPORTING
        assert next_state("exporting", Trigger.FOUND_COPY) is State.DONE
    assert machine._machine() is built and not built.models
    assert [r for r in caplog.records if r.name.startswith("transitions")] == []
