"""The jobs the intake queue carries, and how one is read into a ledger request.

Two formats share the queue ``<namespace>:queue:migration_<name>``:

* **Sidekiq jobs, as the Atmosphere platform pushes them**::

    {"retry":true,"queue":"migration_site-a",
     "class":"Migratio::Worker::OpenstackOpenstackMigrator",
     "args":["<source image uuid>","<destination site id>"],
     "jid":"e53dcb704f3fd4e0ba51db83","created_at":1795618680.14,"enqueued_at":1795618680.15}

  Classes ``Migratio::Worker::OpenstackOpenstackMigrator`` and
  ``Migratio::Worker::OpenstackAmazonMigrator``; the source site is the
  daemon's own ``name``. Extra fields are ignored, except ``base`` (below).

* **migratio's native job**::

    {"class":"migratio","image":"<source image id>","to":"<destination site id>",
     "from":"<source site id; default: the daemon's name>","jid":"<unique job id>",
     "base":"<optional: the image's previous version, a source image id>"}

``base`` (either format) names the previous version of the image, which an
incremental upload starts from when it was migrated to the same destination
(without it, the source's own ``base_image_ref`` is used).

A job is identified by its ``jid`` (at most 64 characters). A job without one is
identified by the SHA-256 of its bytes, so the very same bytes pushed twice
count as one job; give every job its own ``jid`` (``migratio submit --via-redis``
does).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection, Mapping
from typing import Any

from migratio.ledger.store import JobRequest
from migratio.text import ascii_line, is_printable

SIDEKIQ_CLASSES = frozenset(
    {
        "Migratio::Worker::OpenstackOpenstackMigrator",
        "Migratio::Worker::OpenstackAmazonMigrator",
    }
)
NATIVE_CLASS = "migratio"
# What Sidekiq's Dead set shows for a dead job it could not push back (``dead_set``).
UNREADABLE_CLASS = "Migratio::UnreadableJob"

# Column sizes in the ledger: a longer value is a bad job, not a failed transaction.
MAX_IMAGE_ID = 255
MAX_JOB_ID = 64


class BadJob(Exception):
    """A job that cannot become a migration.

    ``image_id`` and ``dest_site`` are set when they could be read, so the
    failure can be reported to the platform through feedback.
    """

    def __init__(
        self, reason: str, image_id: str | None = None, dest_site: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.image_id = image_id
        self.dest_site = dest_site


def parse(
    raw: bytes,
    *,
    own_site: str,
    sites: Collection[str],
    origin: str,
    sources: Collection[str] | None = None,
) -> JobRequest:
    """Read one raw job; BadJob with a one-line reason if it cannot be a migration.

    ``sites`` are the configured sites, ``sources`` those images can be read from
    (default: all of them).

    Whatever a field holds (any JSON type, any code point), the answer is a
    JobRequest or a BadJob: a job that cannot be understood must never stop the
    intake, so even an unforeseen failure here becomes a BadJob.
    """
    try:
        return _parse(
            raw,
            own_site=own_site,
            sites=sites,
            origin=origin,
            sources=sites if sources is None else sources,
        )
    except BadJob:
        raise
    except Exception as exc:
        raise BadJob(f"cannot read the job: {type(exc).__name__}: {ascii_line(exc)}") from None


def _parse(
    raw: bytes,
    *,
    own_site: str,
    sites: Collection[str],
    origin: str,
    sources: Collection[str],
) -> JobRequest:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadJob(f"not JSON: {ascii_line(exc)}") from None
    except RecursionError:
        raise BadJob("not JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadJob(f"not a JSON object but {_json_kind(body)}")
    worker_class = body.get("class")
    if "class" in body and not isinstance(worker_class, str):
        raise BadJob(f"'class' must be a string, got {_short(worker_class)}")
    if worker_class in SIDEKIQ_CLASSES:
        image_id, dest_site = _sidekiq_args(body)
        source_site = own_site
    elif worker_class == NATIVE_CLASS:
        image_id = _text(body, "image", MAX_IMAGE_ID)
        dest_site = _text(body, "to", MAX_IMAGE_ID)
        source_site = _text(body, "from", MAX_IMAGE_ID) if "from" in body else own_site
    elif worker_class == UNREADABLE_CLASS:
        raise BadJob("a stand-in for a dead job that could not be kept whole: it cannot be retried")
    elif "class" not in body:
        raise BadJob("no 'class' field")
    else:
        raise BadJob(f"unknown class {_short(worker_class)}")
    for role, site in (("destination", dest_site), ("source", source_site)):
        if site not in sites:
            raise BadJob(f"unknown {role} site {_short(site)}", image_id, dest_site)
    if source_site not in sources:
        raise BadJob(
            f"site {_short(source_site)} is a destination only: images migrate to it, not from it",
            image_id,
            dest_site,
        )
    if source_site == dest_site:
        raise BadJob(
            f"source and destination are the same site {source_site!r}", image_id, dest_site
        )
    base = body.get("base")
    if base is not None:
        _check_text("'base'", base, MAX_IMAGE_ID)
    return JobRequest(
        job_id=_job_id(body, raw),
        source_site=source_site,
        dest_site=dest_site,
        image_id=image_id,
        origin=origin,
        base_image_id=base,
    )


def native_job(
    image_id: str, dest_site: str, source_site: str, jid: str, base: str | None = None
) -> bytes:
    """A native job as ``migratio submit --via-redis`` pushes it."""
    body: dict[str, Any] = {
        "class": NATIVE_CLASS,
        "image": image_id,
        "to": dest_site,
        "from": source_site,
        "jid": jid,
        "created_at": time.time(),
    }
    if base is not None:
        body["base"] = base
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _sidekiq_args(body: Mapping[str, Any]) -> tuple[str, str]:
    args = body.get("args")
    if not isinstance(args, list):
        raise BadJob("args must be a list [source image uuid, destination site id]")
    if len(args) != 2:
        raise BadJob(f"expected 2 args [source image uuid, destination site id], got {len(args)}")
    names = ("args[0] (source image uuid)", "args[1] (destination site id)")
    for name, value in zip(names, args, strict=True):
        _check_text(name, value, MAX_IMAGE_ID)
    return args[0], args[1]


def _text(body: Mapping[str, Any], field: str, limit: int) -> str:
    value = body.get(field)
    _check_text(repr(field), value, limit)
    return str(value)


def _check_text(name: str, value: Any, limit: int) -> None:
    """A field the ledger stores and operators read: a short, printable, valid string.

    A lone surrogate (JSON ``"\\ud800"``) cannot be stored as UTF-8, and NUL or
    other control characters have no place in an id (PostgreSQL refuses NUL).
    """
    if not isinstance(value, str) or not value.strip():
        raise BadJob(f"{name} must be a non-empty string, got {_short(value)}")
    if len(value) > limit:
        raise BadJob(f"{name} is longer than {limit} characters")
    if not is_printable(value):
        raise BadJob(f"{name} holds control or invalid characters: {_short(value)}")


def _job_id(body: Mapping[str, Any], raw: bytes) -> str:
    jid = body.get("jid")
    if jid is None:
        return hashlib.sha256(raw).hexdigest()[:24]
    _check_text("jid", jid, MAX_JOB_ID)
    return str(jid)


def _json_kind(value: Any) -> str:
    """What JSON calls the kind of ``value`` (operators read JSON, not Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else type(value).__name__


def _short(value: Any) -> str:
    """A value quoted for a reason: ASCII-escaped, so any content is safe to store and print."""
    text = ascii(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 80 else text[:77] + "..."
