"""``status`` prints its table as plain text where that looks exactly like
rich's table (start-up time, issue 12), and leaves the rest to rich."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from migratio.cli.columns import plain_table
from migratio.cli.inspect import COLUMNS, _cells, status_table


def _row(n: int, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": f"{n:08x}-0000-4000-8000-000000000000",
        "image": f"{n:08x}-1111-4000-8000-000000000000",
        "name": None,
        "source_site": "site-a",
        "dest_site": "site-b",
        "state": "failed" if n % 3 == 0 else "uploading",
        "activity": "ended" if n % 3 == 0 else "waiting to retry",
        "retry_in_seconds": 40.0,
        "progress": None if n % 2 else 0.25,
        "bytes_done": 0,
        "bytes_total": None,
        "age_seconds": 90.0 * n,
        "error": "glance said 500" if n % 3 == 0 else None,
    }
    return {**row, **changes}


def _rich(rows: list[dict[str, Any]], width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width).print(status_table(rows))
    return out.getvalue().splitlines()


@pytest.mark.parametrize(
    ("rows", "width"),
    [
        ([_row(n, state="done", activity="ended", error=None) for n in range(1, 8)], 100),
        ([_row(n) for n in range(1, 8)], 200),
        ([_row(1, name="ubuntu-24.04 → prod", error="x" * 59 + "…")], 200),
        ([_row(2, image="evil\x1b[31mRED\u202e", state="queued", error=None)], 100),
        ([], 100),
    ],
)
def test_the_plain_table_is_riches_table_where_it_fits(
    rows: list[dict[str, Any]], width: int
) -> None:
    plain = plain_table(COLUMNS, [_cells(row) for row in rows], width, bold=False)
    assert plain is not None and plain == _rich(rows, width)


def test_what_rich_lays_out_otherwise_is_left_to_rich() -> None:
    wide = [_row(3, name="n" * 80)]  # wider than the terminal: rich wraps it
    assert plain_table(COLUMNS, [_cells(row) for row in wide], 100, bold=False) is None
    assert plain_table(COLUMNS, [_cells(row) for row in wide], 200, bold=False) == _rich(wide, 200)
    for name in ("テンプレート", "cafe\u0301"):  # two columns, zero columns
        rows = [_row(4, name=name)]
        assert plain_table(COLUMNS, [_cells(row) for row in rows], 100, bold=False) is None


def test_the_header_is_bold_on_a_terminal_only() -> None:
    lines = plain_table(COLUMNS, [_cells(_row(1))], 200, bold=True)
    assert lines is not None and lines[0].startswith("\x1b[1m ID ") and lines[0].endswith("\x1b[0m")
    assert "\x1b" not in lines[1]
