"""Text for people: one-line messages, and remote data made safe for a terminal."""

from __future__ import annotations

import unicodedata

# Controls (ESC sequences, newlines), format characters (bidi overrides, zero-width
# marks), surrogates, private-use and unassigned code points, line/paragraph separators.
UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` with every run of whitespace (newlines included) as one space, cut to ``limit``."""
    flat = " ".join(str(text).split())
    if limit is not None and len(flat) > limit:
        return flat[: limit - 3] + "..."
    return flat


def ascii_line(text: object, limit: int | None = None) -> str:
    """``one_line`` with every non-ASCII character escaped: for data that may hold
    anything (a lone surrogate cannot even be encoded), written to logs and Redis."""
    return one_line(ascii(str(text))[1:-1], limit)


def error_text(exc: BaseException) -> str:
    """An exception as ``Type: message`` (just the type when it has no message)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def is_printable(text: str) -> bool:
    return not any(unicodedata.category(char) in UNPRINTABLE_CATEGORIES for char in text)


def printable(text: object) -> str:
    """``text`` as a terminal may show it: every unprintable character escaped
    (``\\x1b``, ``\\u202e``), so data from a job or a cloud cannot move the
    cursor, recolour the screen, reorder a line or forge a new one."""
    value = str(text)
    if is_printable(value):
        return value
    return "".join(
        _escaped(char) if unicodedata.category(char) in UNPRINTABLE_CATEGORIES else char
        for char in value
    )


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
