"""Jobs the intake must refuse, each with the start of the reason it must give:
shared by the intake tests and the hostile-inputs suite (R4)."""

from __future__ import annotations

from tests.support.redis_peer import sidekiq_job

BAD_JOBS: list[tuple[bytes, str]] = [
    (b"not json at all", "not JSON: "),
    (b"\xff\xfe{", "not JSON: "),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON: nested too deeply"),
    (b'["img-1", "site-b"]', "not a JSON object but an array"),
    (sidekiq_job(["img-1", "site-b"], worker="Migratio::Worker::Nope"), "unknown class 'Migr"),
    (b'{"args": ["img-1", "site-b"]}', "no 'class' field"),
    (sidekiq_job(["img-1"]), "expected 2 args [source image uuid, destination site id], got 1"),
    (sidekiq_job(["img-1", "site-b", "x"]), "expected 2 args"),
    (sidekiq_job("img-1 site-b"), "args must be a list"),
    (sidekiq_job(["", "site-b"]), "args[0] (source image uuid) must be a non-empty string"),
    (sidekiq_job([" ", "site-b"]), "args[0] (source image uuid) must be a non-empty string"),
    (sidekiq_job([42, "site-b"]), "args[0] (source image uuid) must be a non-empty string, got 42"),
    (sidekiq_job(["img-1", None]), "args[1] (destination site id) must be a non-empty string"),
    (sidekiq_job(["img-x", "nowhere"]), "unknown destination site 'nowhere'"),
    (sidekiq_job(["img-y", "site-a"]), "source and destination are the same site 'site-a'"),
    (b'{"class": "migratio", "image": "img-1"}', "'to' must be a non-empty string, got null"),
    (b'{"class": "migratio", "image": "i", "to": "site-b", "jid": 7}', "jid must be"),
    # Poison that once stopped the whole intake: a class that is not a string
    # (unhashable), and lone surrogates that cannot be stored as UTF-8.
    (b'{"class": ["x"], "args": ["img-1", "site-b"]}', "'class' must be a string, got [\"x\"]"),
    (b'{"class": {"a": 1}, "args": ["img-1", "site-b"]}', "'class' must be a string"),
    (sidekiq_job(["\ud800", "site-b"]), "args[0] (source image uuid) holds control or invalid"),
    (sidekiq_job(["img-1", "site-\udfff"]), "args[1] (destination site id) holds control or"),
    (sidekiq_job(["img-1", "site-b"], jid="\ud800" * 3), "jid holds control or invalid"),
    (b'{"class": "migratio", "image": "i\\u0000x", "to": "site-b"}', "'image' holds control"),
    (sidekiq_job(["img\x1b[31m\u202e\n", "site-b"]), "args[0] (source image uuid) holds"),
]
