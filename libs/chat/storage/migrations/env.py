"""Alembic environment: runs on the connection handed over by ``chat.storage.sql.migrate``
(or on ``sqlalchemy.url`` when alembic's CLI is used directly)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from chat.storage.sql import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=sa.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
