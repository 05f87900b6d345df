"""What a database error means for the rows in flight, decided by its cause, not by the wrapper it arrived in.

- transient: the transaction lost a race (deadlock, serialization failure): retry the whole transaction now.
- unavailable: the database cannot take writes at the moment (down, read-only, disk full, I/O error, locked,
  connection lost): spool the rows, replace the connection, retry with backoff until it answers.
- refused: the database rejects these rows for their content (out of range, bad encoding): set them aside.

Driver errors raised on the raw driver connection (COPY, `executemany`) reach us unwrapped, so the chain
(`.orig`, `__cause__`, `__context__`) is walked and the driver's own classes and SQLSTATEs decide.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Literal

Kind = Literal["transient", "unavailable", "refused"]
TRANSIENT: Kind = "transient"
UNAVAILABLE: Kind = "unavailable"
REFUSED: Kind = "refused"

# SQLSTATE classes: 08 connection, 53 insufficient resources (disk full, out of memory), 57 operator
# intervention (shutdown), 58 system error (I/O), XX internal, 25006 read-only transaction (a standby),
# 42501 insufficient privilege, 42P01 undefined table (schema not there yet), 3D000 no such database
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58", "XX", "F0", "HV")
_UNAVAILABLE_STATES = {"25006", "42501", "42P01", "3D000", "55006", "55000"}
_TRANSIENT_STATES = {"40001", "40P01", "40002", "40003", "55P03", "57014"}  # 57014: lock_timeout cancel
_SQLITE_UNAVAILABLE_WORDS = ("readonly", "read-only", "disk", "full", "i/o", "locked", "busy", "unable to open",
                             "malformed", "not a database", "closed", "no such table", "cannot commit",
                             "cannot start a transaction")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 16:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for nxt in (getattr(e, "orig", None), e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def classify(exc: BaseException) -> Kind:
    """transient | unavailable | refused, from the innermost cause that tells."""
    import psycopg
    from sqlalchemy import exc as sa

    for e in _chain(exc):
        if isinstance(e, psycopg.Error):
            state = getattr(e, "sqlstate", None) or ""
            if state in _TRANSIENT_STATES or state.startswith("40"):
                return TRANSIENT
            if state == "23514" and "partition" in str(e):  # a day's partition dropped under us: recreate
                return TRANSIENT
            if state:
                return UNAVAILABLE if state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES else REFUSED
            # raised in the client (no SQLSTATE): connection trouble, or a value it cannot send
            return UNAVAILABLE if isinstance(e, psycopg.OperationalError | psycopg.InterfaceError) else REFUSED
        if isinstance(e, sqlite3.Error):
            text = str(e).lower()
            if isinstance(e, sqlite3.OperationalError):
                return UNAVAILABLE  # readonly, disk full, I/O error, locked/busy, cannot open
            if isinstance(e, sqlite3.DatabaseError | sqlite3.ProgrammingError) and any(
                    w in text for w in _SQLITE_UNAVAILABLE_WORDS):
                return UNAVAILABLE
            return REFUSED
        if isinstance(e, sa.DisconnectionError | sa.TimeoutError | sa.ResourceClosedError):
            return UNAVAILABLE
        if isinstance(e, OSError | MemoryError | TimeoutError | ConnectionError):
            return UNAVAILABLE
    if isinstance(exc, sa.OperationalError | sa.InterfaceError):  # wrapped, without a driver cause
        return UNAVAILABLE
    return REFUSED


def is_unavailable(exc: BaseException) -> bool:
    """The database could not take the rows (retry later), as opposed to refusing them (set them aside)."""
    return classify(exc) != REFUSED


def reason(exc: BaseException) -> str:
    """One line naming the cause, for logs and set-aside rows (driver text minus SQL and parameters)."""
    inner = next((e for e in _chain(exc) if not type(e).__module__.startswith("sqlalchemy")), exc)
    text = (str(inner).strip().splitlines() or [""])[0][:300]
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__
