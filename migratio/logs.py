"""How ``migratio run`` logs: text or JSON lines on stderr, fit for journald, with
migratio's level apart from the libraries', the migration a line is about, and
no secret at any level.

Libraries are chatty at DEBUG and some print what they send (keystoneauth's
curl lines, botocore's request dicts); their level is separate
(``log_level_libraries``) and a redacting filter on the handler is the last line
of defence, whatever a library or a future log line prints.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

# Fields a record may carry (``extra=`` or ``migration_context``) that JSON lines show.
CONTEXT_FIELDS = ("migration", "state", "site", "source_site", "dest_site")
OWN_LOGGER = "migratio"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"
# journald stamps every line itself and reads the level from a "<N>" prefix.
JOURNAL_FORMAT = "%(levelname)s %(threadName)s %(name)s: %(message)s"
SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
REDACTED = "***"

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "migratio_log_context", default=None
)

# ---- secrets -------------------------------------------------------------------

_SECRET_PATTERNS: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # SSH and TLS private keys, also cut short.
    (
        re.compile(
            r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.DOTALL,
        ),
        r"-----BEGIN \1PRIVATE KEY----- *** -----END \1PRIVATE KEY-----",
    ),
    # A password in a URL: redis://:pw@host, postgresql://user:pw@host.
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*:)[^@\s/'\"]+@"), rf"\1{REDACTED}@"),
    # Header values: keystoneauth's curl lines, botocore's request dicts, http.client.
    (
        re.compile(
            r"(?i)((?:x-auth-token|x-subject-token|x-service-token|authorization|"
            r"proxy-authorization|x-amz-security-token|cookie|set-cookie)"
            r"['\"]?\s*[:=]\s*b?['\"]?)[^'\"\r\n,]+"
        ),
        rf"\1{REDACTED}",
    ),
    # botocore's DEBUG prints each SigV4 signature: enough to replay that request.
    (re.compile(r"(Signature:\s*)[0-9a-f]{64}\b"), rf"\1{REDACTED}"),
    # Secret-looking keys of JSON, dict reprs, query strings and key=value text.
    (
        re.compile(
            r"(?i)(['\"]?\b(?:password|passwd|passphrase|secret|[a-z_]*secret_access_key|"
            r"secretaccesskey|[a-z_]*session_token|sessiontoken|x-amz-credential|"
            r"x-amz-signature|credential|private_key|api_key|access_token|auth_token|"
            r"application_credential_secret|token)['\"]?\s*[:=]\s*b?['\"]?)"
            r"(?![{\[])[^'\"\s,}&]+"
        ),
        rf"\1{REDACTED}",
    ),
    # Keystone Fernet tokens and AWS access key ids, wherever they appear.
    (re.compile(r"\bgAAAAA[A-Za-z0-9_=-]{20,}"), f"gAAAAA{REDACTED}"),
    (re.compile(r"\b(AKIA|ASIA|AROA|AIDA|AGPA)[A-Z0-9]{16}\b"), rf"\1{REDACTED}"),
    # A 40-character mixed-case base64 word is how an AWS secret key looks; sha1
    # digests (lowercase hex) do not match.
    (
        re.compile(
            r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])"
            r"(?=[A-Za-z0-9/+]*[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
        ),
        REDACTED,
    ),
]
# JSON bodies whose whole value goes: a Keystone token (roles, user, catalogue)
# and a service catalogue (every endpoint of the cloud).
_SECRET_BODIES = re.compile(r"(['\"](?:catalog|token|credentials)['\"]\s*:\s*)(?=[{\[])")


def redact(text: str) -> str:
    """``text`` with every secret shape migratio knows of replaced by ``***``."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return _redact_bodies(text)


def _redact_bodies(text: str) -> str:
    out: list[str] = []
    position = 0
    while match := _SECRET_BODIES.search(text, position):
        end = _end_of_value(text, match.end())
        out.append(text[position : match.end()] + f'"{REDACTED}"')
        position = end
    out.append(text[position:])
    return "".join(out)


def _end_of_value(text: str, start: int) -> int:
    """Where the JSON object or array at ``start`` ends (the end of text if it never does)."""
    depth = 0
    quote: str | None = None
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text)


class RedactSecrets(logging.Filter):
    """Renders each record's message (and traceback) once, redacted, before any
    formatter sees it; on the handler, so it covers every library's records too."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a library's broken format string must not lose the line
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# ---- the migration a line is about --------------------------------------------


@contextmanager
def migration_context(**fields: str) -> Iterator[dict[str, str]]:
    """Every record logged in this thread inside the block carries ``fields``
    (``migration``, ``state``, ``source_site``, ``dest_site``); the yielded dict
    may be updated as the migration moves on."""
    current = {**(_context.get() or {}), **fields}
    token = _context.set(current)
    try:
        yield current
    finally:
        _context.reset(token)


class AddContext(logging.Filter):
    """Copies the thread's migration context onto records that do not carry their own."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


# ---- formats -------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, thread, message, the migration
    context when there is one, and the traceback as ``exception``."""

    def __init__(self, *, priority_prefix: bool = False) -> None:
        super().__init__()
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        line = json.dumps(entry, ensure_ascii=False)
        return _prefixed(record, line) if self.priority_prefix else line


class JournalTextFormatter(logging.Formatter):
    """Text without a timestamp, led by the syslog priority journald reads."""

    def format(self, record: logging.LogRecord) -> str:
        return _prefixed(record, super().format(record))


def _prefixed(record: logging.LogRecord, line: str) -> str:
    # Continuation lines of a traceback are their own journal entries; each gets the level.
    prefix = f"<{SYSLOG_PRIORITY.get(record.levelname, 6)}>"
    return "\n".join(prefix + part for part in line.split("\n"))


def under_journald(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM``
    names its device and inode; a redirected stderr is not the journal)."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def formatter(log_format: str, *, journald: bool) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(priority_prefix=journald)
    if journald:
        return JournalTextFormatter(JOURNAL_FORMAT)
    return logging.Formatter(TEXT_FORMAT)


# ---- wiring --------------------------------------------------------------------

_HANDLER_NAME = "migratio"


def configure(
    *,
    level: str = "INFO",
    library_level: str = "WARNING",
    log_format: str = "text",
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Log to ``stream`` (stderr): migratio's loggers at ``level``, every other
    logger at ``library_level``. Called again (a reload), it replaces its handler."""
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter(log_format, journald=under_journald(stream, environ)))
    handler.addFilter(AddContext())
    handler.addFilter(RedactSecrets())
    root.addHandler(handler)
    root.setLevel(library_level)
    logging.getLogger(OWN_LOGGER).setLevel(level)
    return handler
