"""Ledger transactions: one per facade method, committed at the end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One ledger transaction: committed at the end, rolled back on any error."""
    with sessions.begin() as session:
        yield session
