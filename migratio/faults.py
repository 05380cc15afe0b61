"""Fault points: named places where a test can pause, fail or kill the process.

Crash-safety is only proven by crashing at the awkward moments: between moving a
Redis job and committing it to the ledger, just before or after a transition
commits, after some bytes of a transfer. The code names those moments with
``faults.point(...)``; a test picks some and says what happens there through the
environment of the process it starts::

    MIGRATIO_FAULTS="intake.after_move=pause:120"
    MIGRATIO_FAULTS="transition.after_commit.uploading=crash"
    MIGRATIO_FAULTS="transfer.bytes=crash@8388608,transition.before_commit=fail"

A rule is ``POINT=ACTION``; ``POINT`` may end in a qualifier (the state a
transition leaves) to narrow it. Actions: ``pause:SECONDS`` (sleep, or until
the ``stopping`` event passed to the point is set), ``crash`` (SIGKILL this
process: nothing runs after it, as with a power cut), ``fail`` (raise a
TransientError, as a flaky peer would). ``@N`` fires only once a point's
``amount`` (bytes so far) reaches N. Unset (production), every point is one
dictionary lookup and does nothing.

The points (``<state>``: the state the migration is in, or leaves):

- ``intake.after_move``: jobs moved to this consumer's Redis list, not yet in
  the ledger.
- ``transition.before_commit.<state>``, ``transition.after_commit.<state>``:
  around the commit of a state's transition and its audit row.
- ``transfer.bytes.<state>`` (``amount``: bytes so far): a checkpoint of a
  transfer (staging the source while exporting, the payload while uploading).
- ``follow.bytes`` (``amount``: bytes so far): the source written to the work
  dir while its blocks leave (``following``), not yet verified.
- ``destination.record_created``: the destination record exists at the site,
  not yet in the ledger.
- ``aws.block_sent`` (``amount``: the end of the block): a PutSnapshotBlock
  answered, not yet journalled.
- ``aws.snapshot_completed``: CompleteSnapshot accepted, not yet journalled.
- ``aws.image_registered``: RegisterImage answered, the AMI not yet tagged.
- ``aws.image_copied``: CopyImage answered and the copy recorded as an
  artifact, not yet tagged (``copy_to_regions``).
- ``ssh.sftp_bytes`` (``amount``: bytes written): a chunk of the staging file
  handed to ``ssh`` (or written over SFTP), not yet journalled.
- ``convert.running``, ``info.running``, ``map.running``: qemu-img started,
  still running (``map``: converting for ebs-direct, which reads the staged
  image in place).

``support/chaos`` and ``tests/e2e/test_crash_matrix.py`` crash at each of them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from functools import cache

from migratio.errors import TransientError

log = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "MIGRATIO_FAULTS"


@dataclass(frozen=True)
class Rule:
    """What happens at a point: ``action`` with ``seconds``, from ``threshold`` on."""

    action: str
    seconds: float = 0.0
    threshold: int = 0


def point(
    name: str,
    qualifier: str = "",
    *,
    amount: int = 0,
    stopping: threading.Event | None = None,
) -> None:
    """Run the rule a test set for this point, if any (normally: nothing)."""
    rules = _rules()
    if not rules:
        return
    rule = rules.get(f"{name}.{qualifier}") if qualifier else None
    rule = rule or rules.get(name)
    if rule is None or amount < rule.threshold:
        return
    where = f"{name}.{qualifier}" if qualifier else name
    log.warning("fault point %s: %s", where, rule.action)
    if rule.action == "pause":
        if stopping is not None:
            stopping.wait(rule.seconds)
        else:
            threading.Event().wait(rule.seconds)
    elif rule.action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif rule.action == "fail":
        raise TransientError(f"fault injected at {where}")


def parse(spec: str) -> dict[str, Rule]:
    """The rules of a ``MIGRATIO_FAULTS`` value; ValueError names a bad one."""
    rules: dict[str, Rule] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, threshold = action.partition("@")
        kind, _, argument = action.partition(":")
        readable = bool(name) and kind in ("pause", "crash", "fail")
        readable = readable and (kind == "pause") == bool(argument)
        try:
            rule = Rule(kind, float(argument or 0), int(threshold or 0))
        except ValueError:
            readable = False
        if not readable:
            raise ValueError(f"{ENVIRONMENT_VARIABLE}: cannot read rule {item!r}")
        rules[name] = rule
    return rules


@cache
def _rules() -> dict[str, Rule]:
    spec = os.environ.get(ENVIRONMENT_VARIABLE, "")
    return parse(spec) if spec else {}
