"""Alembic environment: runs on the connection `telemetry.ledger.db.upgrade` hands it, or on the URL."""

from __future__ import annotations

import re

from alembic import context
from sqlalchemy import create_engine

from telemetry.ledger.models import Base

config = context.config
target_metadata = Base.metadata
_PARTITION = re.compile(r"^usage_records_\d{8}$")


def include_name(name, type_, parent_names):  # type: ignore[no-untyped-def]
    """Day partitions of usage_records are managed at run time, not by revisions."""
    if type_ == "table":
        return not _PARTITION.match(name or "")
    if type_ == "index":
        return not _PARTITION.match(parent_names.get("table_name") or "")
    return True


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          include_name=include_name)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True,
                          include_name=include_name)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
