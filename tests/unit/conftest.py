"""Unit tests need no peer: their ledger is SQLite (the same tests on a real
PostgreSQL are in tests/drivers/ledger/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from migratio.ledger.store import Ledger


@pytest.fixture
def ledger(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    """A fresh SQLite ledger at the newest schema."""
    from migratio.ledger.store import Ledger
    from tests.support.ledgers import fresh_sqlite_ledger, sqlite_engine

    engine = sqlite_engine(fresh_sqlite_ledger(tmp_path, tmp_path_factory.getbasetemp()))
    yield Ledger(engine)
    engine.dispose()
