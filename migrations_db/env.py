"""Alembic environment: the engine comes from migratio (``config.attributes['engine']``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from migratio.ledger.models import Base

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):
    raise RuntimeError("run schema upgrades through 'migratio db upgrade'")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
