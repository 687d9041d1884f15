"""One sweep (or undo) per target at a time: a session-level PostgreSQL advisory lock.

The lock belongs to the connection, so a killed kernel or process releases it when its
connection ends; no lock file, no stale lock. The key is derived from the target's
schema and table name, so every copy of the runbook, on any host, computes the same key,
and a sweep of ``tenant2``'s table never waits for one of ``public``'s. Advisory locks are
per database: only this database's sessions can hold it. A session lock needs one
server session for the whole run: through a transaction-mode PgBouncer it is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import SweepInProgressError
from ..rules.target import Target
from ..sql import catalog
from .connect import refuse_transaction_pooler
from .transactions import Conn

__all__ = ["lock_key", "holder", "target_lock"]


def lock_key(target: Target) -> int:
    """A signed 64-bit advisory lock key for the target."""
    digest = hashlib.sha256(f"litellm-runbook:{target.schema}.{target.table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def holder(conn: Conn, key: int) -> str:
    """Who holds the lock in this database: pid, application (carries the run id), user,
    client, since when. A role without pg_read_all_stats sees another role's client and
    start time as NULL: they are then "unknown". Reads only."""
    row = conn.execute(catalog.lock_holder(), {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF}).fetchone()
    if row is None:
        return "a session that has just finished"
    since = f"{row[4]:%Y-%m-%d %H:%M:%S %Z}" if row[4] is not None else "unknown"
    client = row[3] or "unknown (not visible to this role)"
    return f"pid {row[0]} ({row[1] or 'no application name'}, user {row[2]}, from {client}, connected since {since})"


@contextmanager
def target_lock(conn: Conn, target: Target) -> Iterator[None]:
    """Hold the target's lock for the block; SweepInProgressError at once if taken,
    PoolerError (nothing taken) on a connection through a transaction-mode PgBouncer."""
    refuse_transaction_pooler(conn, f"a live sweep or undo of {target.schema}.{target.table}")
    key = lock_key(target)
    got = conn.execute(catalog.try_advisory_lock(), {"key": key}).fetchone()
    if not got or not got[0]:
        raise SweepInProgressError(
            f"another sweep or undo of {target.schema}.{target.table} is running: {holder(conn, key)}. "
            "Nothing was written; wait for it to finish or stop it."
        )
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute(catalog.advisory_unlock(), {"key": key})
