"""Figures for docs/RELIABILITY.md, recorded by the fault-injection tests themselves.

A test that measures a row of the reliability table (R1 to R8) calls ``record`` with
what it measured; ``support/chaos`` sets ``MIGRATIO_RELIABILITY_OUT`` to a JSON-lines
file, runs every ``reliability`` test (the ``chaos`` ones too) and renders the table
from that file (``python3 -m tests.support.reliability_report``). Without the
variable (a normal test run), ``record`` does nothing: the assertions are the test.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

OUTPUT_VARIABLE = "MIGRATIO_RELIABILITY_OUT"


def record(row: str, case: str, **figures: Any) -> None:
    """Note the figures of one case of table row ``row`` (e.g. ``"R3"``, ``"source Glance"``)."""
    output = os.environ.get(OUTPUT_VARIABLE)
    if not output:
        return
    line = {"row": row, "case": case, "figures": figures, "at": time.time()}
    with Path(output).open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(line, default=str, sort_keys=True) + "\n")
