"""Database health between batches: the sweep pauses rather than add load to a struggling server.

Checked before every batch (a few catalog reads, about a millisecond):

- replication lag: bytes of WAL the slowest standby has not replayed yet
  (``pg_stat_replication``; needs pg_monitor or superuser to see other sessions' rows);
- lock waiters: sessions waiting for a lock while they hold or want one on the target
  table, i.e. LiteLLM requests queued behind something on this table;
- vacuum: a VACUUM in progress on the table (manual, or autovacuum), except an ordinary
  autovacuum that started after the sweep began: the sweep's own dead rows triggered it,
  and waiting for it would stall the sweep for as long as the vacuum of the whole table
  takes (minutes on a large one) behind work the sweep caused. Anti-wraparound autovacuums
  always pause the sweep, as does one whose start cannot be seen (no pg_read_all_stats).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .session import Conn
from .statements import health_signals, table
from .target import Target

__all__ = ["HealthLimits", "Health", "check_health"]


@dataclass(frozen=True)
class HealthLimits:
    max_replication_lag_bytes: int = 64 * 1024 * 1024
    max_lock_waiters: int = 0
    pause_during_vacuum: bool = True


@dataclass(frozen=True)
class Health:
    replication_lag_bytes: int
    lock_waiters: int
    vacuum_running: bool

    def problems(self, limits: HealthLimits) -> list[str]:
        """Why the sweep should pause now; empty when healthy."""
        found = []
        if self.replication_lag_bytes > limits.max_replication_lag_bytes:
            found.append(f"replication lag {self.replication_lag_bytes:,} bytes > {limits.max_replication_lag_bytes:,}")
        if self.lock_waiters > limits.max_lock_waiters:
            found.append(f"{self.lock_waiters} session(s) waiting on locks on the table > {limits.max_lock_waiters}")
        if limits.pause_during_vacuum and self.vacuum_running:
            found.append("a VACUUM of the table is running")
        return found


def check_health(conn: Conn, target: Target, since: datetime | None = None) -> Health:
    """Read the three signals. Reads only catalog views; no transaction is held afterwards.

    ``since``: when the sweep began (server clock, timestamptz); an ordinary autovacuum
    that started later does not count as a running VACUUM. None: every VACUUM counts.
    """
    row = conn.execute(
        health_signals(), {"table": table(target).as_string(conn), "since": since}
    ).fetchone()
    assert row is not None
    return Health(int(row[0] or 0), int(row[1]), bool(row[2]))
