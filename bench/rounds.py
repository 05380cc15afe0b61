"""One JSON object per measured round on stdout, for bench/all to collect.

Each object names its benchmark and carries the parameters it was measured
with (size_mib, ledger, migrations, ...), so a line means the same thing on its
own as in the run that printed it. Human summaries go to stdout too, but never
start with ``{``.
"""

from __future__ import annotations

import json
from typing import Any


def emit(bench: str, **fields: Any) -> None:
    """Print one round (or one figure) as a JSON line, floats to 4 decimals."""
    rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in fields.items()}
    print(json.dumps({"bench": bench, **rounded}), flush=True)
