"""Database health between batches: the sweep pauses rather than add load to a struggling server.

Checked before every batch (a few catalog reads, about a millisecond):

- replication lag: bytes of WAL the slowest standby has not replayed yet
  (``pg_stat_replication``);
- lock waiters: sessions waiting for a lock while they hold or want one on the target
  table, i.e. LiteLLM requests queued behind something on this table;
- vacuum: a VACUUM in progress on the table (manual, or autovacuum), except an ordinary
  autovacuum that started after the sweep began: the sweep's own dead rows triggered it,
  and waiting for it would stall the sweep for as long as the vacuum of the whole table
  takes (minutes on a large one) behind work the sweep caused. Anti-wraparound autovacuums
  always pause the sweep.

Two of them are blind without ``pg_read_all_stats`` (or superuser): PostgreSQL shows
``pg_stat_replication.replay_lsn`` as NULL for other roles' walsenders (lag would read 0)
and ``pg_stat_progress_vacuum.relid`` as NULL for other roles' sessions, autovacuum's
included (no VACUUM would ever pause the sweep). ``blind_signals`` says which, before
the first batch; a live sweep then refuses unless ``allow_blind_health=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..errors import BlindHealthError
from ..rules.target import Target
from ..sql.candidates import table
from ..sql.catalog import health_signals, health_visibility
from .transactions import Conn

__all__ = ["HealthLimits", "Health", "check_health", "blind_signals", "refuse_blind"]


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


def blind_signals(conn: Conn, limits: HealthLimits) -> tuple[str, list[str]]:
    """The current role, and the health signals it cannot see (empty: it sees them all).
    Reads one row; writes nothing. The lock-waiter count (``pg_locks``) is never blind."""
    row = conn.execute(health_visibility()).fetchone()
    assert row is not None
    role, sees_stats = str(row[0]), bool(row[1])
    if sees_stats:
        return role, []
    blind = [
        "replication lag (pg_stat_replication.replay_lsn is NULL for other roles' walsenders: lag would read 0)"
    ]
    if limits.pause_during_vacuum:
        blind.append(
            "VACUUM (pg_stat_progress_vacuum.relid is NULL for other roles' sessions, autovacuum's included: "
            "no VACUUM would pause the sweep)"
        )
    return role, blind


def refuse_blind(role: str, blind: list[str], *, live: bool, allow: bool) -> str:
    """The line saying which signals ``role`` cannot see, for the output and the record.
    BlindHealthError for a ``live`` run unless ``allow``. Writes nothing."""
    line = f"health: role {role} cannot see {'; '.join(blind)}. GRANT pg_read_all_stats TO {role} to see them"
    if live and not allow:
        raise BlindHealthError(
            f"{line}, or pass allow_blind_health=True to run without those pauses. "
            "Refused before the first batch: nothing written."
        )
    if allow:
        return line + "; allow_blind_health=True: going on without those pauses."
    return line + "; a live run will refuse unless allow_blind_health=True."
