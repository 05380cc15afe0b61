"""Dead jobs: migratio's dead-letter list and Sidekiq's Dead set, kept together.

Every job the intake cannot take goes, in the Redis transaction that
acknowledges it, to two places:

* ``<ns>:migratio:dead`` — migratio's list, newest first, at most
  ``dead_letters_max`` long: the one-line reason, up to 64 KiB of the payload as
  it came, the queue and the time. ``migratio dead`` lists, replays and purges it.
* ``<ns>:dead`` — Sidekiq's Dead set (score: time of death), so Sidekiq Web's
  Dead tab and ``Sidekiq::DeadSet`` show the job with its reason, and "Retry"
  there pushes it back on the migration queue, where the intake takes it again.
  Trimmed as Sidekiq trims it: older than 180 days, beyond 10 000 jobs.

The Dead set's entry is the job as it came, fields in their order, with the
queue it was taken from, a ``jid`` if it had none, ``args`` ``[]`` if it had none
(Sidekiq's client refuses a job without), and Sidekiq's dead-job fields
(``error_class`` ``Migratio::BadJob``, ``error_message``, ``failed_at``,
``retry_count``). A job that is not that — not a JSON object, a class that is
not a string, args that are not a list, or more than 64 KiB, of which only the
head was kept — gets a placeholder of class ``Migratio::UnreadableJob``
instead, whose error message says it cannot be retried: a partial copy must
never look whole. Retried anyway, the placeholder comes back dead.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from redis.client import Pipeline

from migratio import sidekiq
from migratio.intake.jobs import UNREADABLE_CLASS

# A dead letter keeps at most this much of its job's payload.
DEAD_PAYLOAD_BYTES = 64 * 1024
# Sidekiq's own limits for its Dead set (Sidekiq.options dead_max_jobs and
# dead_timeout_in_seconds), applied as DeadSet#kill applies them.
SIDEKIQ_DEAD_MAX_JOBS = 10_000
SIDEKIQ_DEAD_TIMEOUT_SECONDS = 180 * 24 * 60 * 60
ERROR_CLASS = "Migratio::BadJob"
# Ruby's JSON.parse refuses deeper nesting (max_nesting 100): such a job would
# break Sidekiq Web's Dead tab, so it gets a placeholder.
MAX_NESTING = 50
WRAPPERS = ("Sidekiq::", "ActiveJob::")
# Of a job that cannot be kept whole, the placeholder shows this many characters.
HEAD_CHARS = 200
PAGE = 100


@dataclass(frozen=True)
class DeadJob:
    """One dead job as written: the list's letter and the Dead set's member, at ``at``."""

    letter: bytes
    member: bytes
    at: float


@dataclass(frozen=True)
class DeadLetter:
    """One entry of migratio's dead-letter list, as ``migratio dead`` shows it.

    ``id`` names it for ``replay`` and ``purge``; ``retryable`` says whether the
    whole job is in Sidekiq's Dead set; ``in_sidekiq`` whether it still is there
    (gone: retried from Sidekiq Web, or trimmed by age or count).
    """

    id: str
    at: float
    reason: str
    queue: str
    jid: str | None
    retryable: bool
    in_sidekiq: bool
    truncated: bool
    payload: str
    raw: bytes

    def summary(self, now: float | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "age_seconds": round((now or time.time()) - self.at, 1),
            "reason": self.reason,
            "queue": self.queue,
            "jid": self.jid,
            "retryable": self.retryable,
            "in_sidekiq": self.in_sidekiq,
            "truncated": self.truncated,
            "payload": self.payload,
        }


def dead_job(raw: bytes, reason: str, queue_key: str, queue: str, at: float) -> DeadJob:
    """The letter for migratio's list and the member for Sidekiq's Dead set.

    A payload longer than ``DEAD_PAYLOAD_BYTES`` keeps only its head, with its
    full size and SHA-256 to recognise it: two 10 MB jobs must not put 20 MB
    into Redis. The letter is ASCII-escaped JSON, so any bytes and any reason
    can be stored.
    """
    entry, why_not = _sidekiq_entry(raw, queue)
    if entry is None:
        entry = _placeholder(raw, queue, why_not)
        error = f"{reason} ({why_not}: it cannot be retried; see migratio dead list)"
    else:
        error = reason
    entry.update(error_message=error, error_class=ERROR_CLASS, failed_at=at, retry_count=0)
    letter: dict[str, object] = {
        "id": secrets.token_hex(6),
        "reason": reason,
        "payload": raw[:DEAD_PAYLOAD_BYTES].decode("utf-8", errors="backslashreplace"),
        "queue": queue_key,
        "at": at,
        "jid": entry["jid"],
        "retryable": not why_not,
    }
    if len(raw) > DEAD_PAYLOAD_BYTES:
        letter.update(
            truncated=True, payload_bytes=len(raw), payload_sha256=hashlib.sha256(raw).hexdigest()
        )
    return DeadJob(
        letter=json.dumps(letter, ensure_ascii=True).encode(),
        member=_dump(entry).encode(),
        at=at,
    )


def _sidekiq_entry(raw: bytes, queue: str) -> tuple[dict[str, Any] | None, str]:
    """The job as Sidekiq's client could push it again, or None and why not."""
    if len(raw) > DEAD_PAYLOAD_BYTES:
        return None, f"the job has {len(raw)} bytes, of which only the first 64 KiB are kept"
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None, "not a JSON job"
    if not isinstance(body, dict):
        return None, "not a JSON object"
    if not isinstance(body.get("class"), str) or body["class"] == UNREADABLE_CLASS:
        return None, "no class name"
    if body["class"].startswith(WRAPPERS):
        # Sidekiq Web would unwrap (YAML-load) its args to show them.
        return None, "a class Sidekiq Web unwraps"
    if not isinstance(body.setdefault("args", []), list):
        return None, "args not a list"
    if "jid" in body and not isinstance(body["jid"], str):
        return None, "a jid that is not a string"
    if _depth(body) > MAX_NESTING:
        return None, "nested too deeply"
    body["queue"] = queue  # Sidekiq's Retry pushes it back where it came from
    body.setdefault("jid", sidekiq.new_jid())
    try:
        _dump(body).encode()
    except (ValueError, UnicodeEncodeError):
        return None, "holds text that cannot be stored as UTF-8"
    return body, ""


def _placeholder(raw: bytes, queue: str, why_not: str) -> dict[str, Any]:
    head = raw[:HEAD_CHARS].decode("utf-8", errors="backslashreplace")
    return {
        "class": UNREADABLE_CLASS,
        "args": [],
        "queue": queue,
        "jid": sidekiq.new_jid(),
        "payload_head": head.encode("ascii", errors="backslashreplace").decode(),
        "payload_bytes": len(raw),
    }


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    return 0


def _dump(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class DeadJobs:
    """The dead jobs of one namespace: written by the intake, read and replayed by operators.

    ``letters_max`` bounds migratio's list (``dead_letters_max``); the Dead set
    is bounded as Sidekiq bounds it.
    """

    def __init__(self, client: redis.Redis, namespace: str, letters_max: int = 10_000) -> None:
        self.client = client
        self.namespace = namespace
        self.letters_max = letters_max
        self.list_key = sidekiq.key(namespace, "migratio:dead")
        self.set_key = sidekiq.key(namespace, "dead")

    def add(self, pipe: Pipeline, jobs: Sequence[DeadJob]) -> None:
        """Queue the writes of ``jobs`` on ``pipe`` (the intake's acknowledging MULTI)."""
        if not jobs:
            return
        for job in jobs:
            pipe.lpush(self.list_key, job.letter)
            pipe.zadd(self.set_key, {job.member: job.at})
        pipe.ltrim(self.list_key, 0, self.letters_max - 1)
        now = max(job.at for job in jobs)
        pipe.zremrangebyscore(self.set_key, "-inf", now - SIDEKIQ_DEAD_TIMEOUT_SECONDS)
        # DeadSet#kill's own bound, kept exactly (it leaves max_jobs - 1).
        pipe.zremrangebyrank(self.set_key, 0, -SIDEKIQ_DEAD_MAX_JOBS)

    # ---- operators --------------------------------------------------------------

    def letters(self) -> list[DeadLetter]:
        """Every dead letter, newest first, each marked whether Sidekiq still shows it."""
        raws = list(self._raw_letters())
        pipe = self.client.pipeline(transaction=False)
        parsed = [_parse_letter(raw) for raw in raws]
        for body in parsed:
            pipe.zrangebyscore(self.set_key, body["at"], body["at"])
        found = pipe.execute() if parsed else []
        return [
            _letter(raw, body, bool(_members_of(members, body.get("jid"))))
            for raw, body, members in zip(raws, parsed, found, strict=True)
        ]

    def find(self, prefix: str) -> DeadLetter:
        """A dead letter by id or unique id prefix."""
        matches = [letter for letter in self.letters() if letter.id.startswith(prefix)]
        if not prefix or len(matches) != 1:
            what = "no dead job" if not matches else f"{len(matches)} dead jobs"
            raise LookupError(f"{what} with id {prefix!r}")
        return matches[0]

    def replay(self, prefix: str) -> str:
        """Push a dead job back on its queue as Sidekiq's Retry would; its jid.

        The letter and the Dead set's entry go, and the job is pushed, in one
        transaction; done concurrently with a Retry in Sidekiq Web, the ledger
        still records the jid once.
        """
        letter = self.find(prefix)
        if not letter.retryable:
            raise ValueError(f"dead job {letter.id} cannot be replayed: {letter.reason}")
        job = json.loads(self._entry_of(_parse_letter(letter.raw)))
        queue = str(job["queue"])

        def move(pipe: Pipeline) -> None:
            found = pipe.zrangebyscore(self.set_key, letter.at, letter.at)
            members = _members_of(found, letter.jid)
            pipe.multi()
            pipe.lrem(self.list_key, 1, letter.raw)  # type: ignore[arg-type]
            for member in members:
                pipe.zrem(self.set_key, member)
            if isinstance(job.get("retry_count"), int):
                job["retry_count"] -= 1
            job["enqueued_at"] = time.time()
            pipe.sadd(sidekiq.key(self.namespace, "queues"), queue)
            pipe.lpush(sidekiq.queue_key(self.namespace, queue), _dump(job))

        self.client.transaction(move, self.list_key, self.set_key)
        return str(job["jid"])

    def purge(self, older_than: timedelta | None = None) -> int:
        """Forget dead jobs (all, or those older than ``older_than``), here and in
        Sidekiq's Dead set; Sidekiq's own dead jobs stay. How many went."""
        cutoff = time.time() - older_than.total_seconds() if older_than else float("inf")
        doomed = [letter for letter in self.letters() if letter.at <= cutoff]
        for start in range(0, len(doomed), PAGE):
            page = doomed[start : start + PAGE]
            finder = self.client.pipeline(transaction=False)
            for letter in page:
                finder.zrangebyscore(self.set_key, letter.at, letter.at)
            found = finder.execute()
            pipe = self.client.pipeline(transaction=True)
            for letter, members in zip(page, found, strict=True):
                pipe.lrem(self.list_key, 1, letter.raw)  # type: ignore[arg-type]
                for member in _members_of(members, letter.jid):
                    pipe.zrem(self.set_key, member)
            pipe.execute()
        return len(doomed)

    def _entry_of(self, body: dict[str, Any]) -> str:
        """The Dead set entry a retryable letter stands for, rebuilt from its payload
        (the same as the one written, also when Sidekiq has trimmed it)."""
        queue = str(body["queue"]).removeprefix(sidekiq.queue_key(self.namespace, ""))
        entry, why_not = _sidekiq_entry(str(body["payload"]).encode(), queue)
        if entry is None:
            raise ValueError(f"dead job cannot be replayed: {why_not}")
        entry["jid"] = body["jid"]
        entry.update(
            error_message=body["reason"],
            error_class=ERROR_CLASS,
            failed_at=body["at"],
            retry_count=0,
        )
        return _dump(entry)

    def _raw_letters(self) -> Iterator[bytes]:
        # Paged: up to 10 000 letters of up to 64 KiB each.
        start = 0
        while page := self.client.lrange(self.list_key, start, start + PAGE - 1):
            yield from (raw for raw in page if isinstance(raw, bytes))
            start += PAGE


def _parse_letter(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"reason": "an unreadable dead letter", "payload": ""}
    body.setdefault("at", 0.0)
    return body


def _letter(raw: bytes, body: dict[str, Any], in_sidekiq: bool) -> DeadLetter:
    return DeadLetter(
        # Letters written before ids existed are named by their bytes.
        id=str(body.get("id") or hashlib.sha256(raw).hexdigest()[:12]),
        at=float(body["at"]),
        reason=str(body.get("reason", "")),
        queue=str(body.get("queue", "")),
        jid=body.get("jid") if isinstance(body.get("jid"), str) else None,
        retryable=body.get("retryable") is True,
        in_sidekiq=in_sidekiq,
        truncated=body.get("truncated") is True,
        payload=str(body.get("payload", "")),
        raw=raw,
    )


def _members_of(members: Sequence[Any], jid: str | None) -> list[bytes]:
    """The Dead set's entries, among those of one score, that are this letter's."""
    if jid is None:
        return []
    mine = []
    for member in members:
        if not isinstance(member, bytes):
            continue
        try:
            body = json.loads(member)
        except ValueError:
            continue
        if not isinstance(body, dict):
            continue
        if body.get("jid") == jid and body.get("error_class") == ERROR_CLASS:
            mine.append(member)
    return mine
