"""One sweep (or undo) per target at a time: a session-level PostgreSQL advisory lock.

The lock belongs to the connection, so a killed kernel or process releases it when its
connection ends; no lock file, no stale lock. The key is derived from the target's
table name, so every copy of the runbook, on any host, computes the same key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import SweepInProgressError
from .session import Conn
from .target import Target

__all__ = ["lock_key", "holder", "target_lock"]


def lock_key(target: Target) -> int:
    """A signed 64-bit advisory lock key for the target."""
    digest = hashlib.sha256(f"litellm-runbook:{target.schema}.{target.table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def holder(conn: Conn, key: int) -> str:
    """Who holds the lock: pid, application (carries the run id), user, client, since when."""
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.usename, coalesce(a.client_addr::text, 'local'), a.backend_start"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        " AND l.classid::bigint = %s AND l.objid::bigint = %s",
        [(key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF],
    ).fetchone()
    if row is None:
        return "a session that has just finished"
    return f"pid {row[0]} ({row[1] or 'no application name'}, user {row[2]}, from {row[3]}, connected since {row[4]:%Y-%m-%d %H:%M:%S %Z})"


@contextmanager
def target_lock(conn: Conn, target: Target) -> Iterator[None]:
    """Hold the target's lock for the block; SweepInProgressError at once if taken."""
    key = lock_key(target)
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
    if not got or not got[0]:
        raise SweepInProgressError(
            f"another sweep or undo of {target.schema}.{target.table} is running: {holder(conn, key)}. "
            "Nothing was written; wait for it to finish or stop it."
        )
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", [key])
