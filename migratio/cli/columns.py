"""The status table laid out as plain text, exactly as rich lays it out when
it fits the terminal: importing rich and rendering 50 rows with it costs about
45 ms of ``migratio status``'s 0.30 s budget (issue 12), for what is then a
padded join. Anything rich would lay out differently (a table wider than the
terminal, which rich wraps; a character that is not one column wide) is left
to rich."""

from __future__ import annotations

import shutil
import unicodedata
from collections.abc import Sequence

BOLD, PLAIN = "\x1b[1m", "\x1b[0m"


def terminal_width(least: int) -> int:
    """The terminal's width (``$COLUMNS``, else 80 when not a terminal), at least ``least``."""
    return max(least, shutil.get_terminal_size().columns)


def plain_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], width: int, *, bold: bool
) -> list[str] | None:
    """The lines of rich's ``Table(box=None, header_style="bold")`` of these
    cells (each padded by one space on either side), or None when rich would
    lay them out otherwise: wider than ``width``, or a character of another width."""
    cells = [list(header), *(list(row) for row in rows)]
    if not all(_one_column_each(cell) for row in cells for cell in row):
        return None
    widths = [max(len(row[n]) for row in cells) for n in range(len(header))]
    if sum(widths) + 2 * len(widths) > width:
        return None
    lines = [
        "".join(f" {cell:<{w}} " for cell, w in zip(row, widths, strict=True)) for row in cells
    ]
    if bold:
        lines[0] = f"{BOLD}{lines[0]}{PLAIN}"
    return lines


def _one_column_each(text: str) -> bool:
    return text.isascii() or all(
        unicodedata.east_asian_width(char) not in ("W", "F")
        and unicodedata.category(char) not in ("Mn", "Me", "Cf", "Cc")
        for char in text
    )
