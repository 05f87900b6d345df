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


def include_object(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    """A model index declared for some dialects only (`info["dialects"]`) is compared only on those."""
    if type_ == "index" and not reflected:
        dialects = obj.info.get("dialects")
        if dialects is not None and context.get_bind().dialect.name not in dialects:
            return False
    return True


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          include_name=include_name, include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True,
                          include_name=include_name, include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
