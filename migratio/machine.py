"""The migration state machine: which state may follow which. It knows no cloud.

Persistence lives in the ledger, which asks this module for the next state and
commits it together with its audit row; an illegal transition raises before any
write happens.
"""

from __future__ import annotations

import logging
import threading
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any

from migratio.errors import IllegalTransition

if TYPE_CHECKING:
    from transitions import Machine


class State(StrEnum):
    QUEUED = "queued"
    EXPORTING = "exporting"
    CONVERTING = "converting"
    UPLOADING = "uploading"
    REGISTERING = "registering"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Trigger(StrEnum):
    START = "start"
    EXPORTED = "exported"
    CONVERTED = "converted"
    UPLOADED = "uploaded"
    REGISTERED = "registered"
    FOUND_COPY = "found_copy"
    FAIL = "fail"
    CANCEL = "cancel"
    REQUEUE = "requeue"


TERMINAL = frozenset({State.DONE, State.FAILED, State.CANCELLED})
ACTIVE = tuple(state for state in State if state not in TERMINAL)

_TRANSITION_TABLE: list[dict[str, Any]] = [
    {"trigger": Trigger.START, "source": State.QUEUED, "dest": State.EXPORTING},
    {"trigger": Trigger.EXPORTED, "source": State.EXPORTING, "dest": State.CONVERTING},
    {"trigger": Trigger.CONVERTED, "source": State.CONVERTING, "dest": State.UPLOADING},
    {"trigger": Trigger.UPLOADED, "source": State.UPLOADING, "dest": State.REGISTERING},
    {"trigger": Trigger.REGISTERED, "source": State.REGISTERING, "dest": State.DONE},
    # Dedup: the destination already holds this exact image.
    {"trigger": Trigger.FOUND_COPY, "source": State.EXPORTING, "dest": State.DONE},
    {"trigger": Trigger.FAIL, "source": list(ACTIVE), "dest": State.FAILED},
    {"trigger": Trigger.CANCEL, "source": list(ACTIVE), "dest": State.CANCELLED},
    {"trigger": Trigger.REQUEUE, "source": [State.FAILED, State.CANCELLED], "dest": State.QUEUED},
]

# transitions treats Enum members by name; hand it plain strings.
_TRANSITIONS = [
    {
        "trigger": str(row["trigger"]),
        "source": [str(s) for s in row["source"]]
        if isinstance(row["source"], list)
        else str(row["source"]),
        "dest": str(row["dest"]),
    }
    for row in _TRANSITION_TABLE
]


_MACHINE_LOCK = threading.Lock()


@cache
def _machine() -> Machine:
    """Built once, on first use (``migratio status`` needs the states, not the
    machine nor the time it takes to import it). Each question gets its own
    model (one migration's state); the lock guards the machine's model list,
    shared by the worker threads."""
    from transitions import Machine

    # transitions logs every trigger at INFO: one line per step of every migration,
    # which the supervisor already logs with more context.
    logging.getLogger("transitions").setLevel(logging.WARNING)
    return Machine(
        model=None,
        states=[state.value for state in State],
        transitions=_TRANSITIONS,
        initial=None,
        auto_transitions=False,
    )


class MigrationModel:
    """One migration's place in the machine: its state (the machine adds the triggers)."""

    state: str


def next_state(current: str, trigger: str) -> State:
    """The state ``trigger`` leads to from ``current``; IllegalTransition otherwise."""
    return _next_state(str(current), str(trigger))


@cache
def _next_state(current: str, trigger: str) -> State:
    """Asked of the machine once per pair: its answer never changes (no conditions)."""
    from transitions import MachineError

    machine = _machine()
    if trigger not in machine.events:
        raise IllegalTransition(f"unknown trigger {trigger!r}")
    model = MigrationModel()
    try:
        with _MACHINE_LOCK:
            machine.add_model(model, initial=State(current).value)
            try:
                model.trigger(trigger)  # type: ignore[attr-defined]  # the machine adds it
            finally:
                machine.remove_model(model)
    except (MachineError, ValueError) as exc:
        raise IllegalTransition(f"cannot {trigger} a migration that is {current}") from exc
    return State(model.state)


def is_terminal(state: str) -> bool:
    return state in TERMINAL
