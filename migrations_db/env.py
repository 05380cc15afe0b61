"""Alembic environment: migratio hands over its engine (or a connection that
holds the upgrade lock) in ``config.attributes``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, Engine

from migratio.ledger.models import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()


given = context.config.attributes.get("connection")
engine = context.config.attributes.get("engine")
if isinstance(given, Connection):
    _run(given)
elif isinstance(engine, Engine):
    with engine.connect() as connection:
        _run(connection)
else:
    raise RuntimeError("run schema upgrades through 'migratio db upgrade'")
