"""Sweep: mark stale rows in bounded batches, each batch its own short transaction.

What it writes: ``status = new_status`` on candidate rows, at most ``batch_size`` per
transaction, oldest first; nothing else. With ``dry_run=True`` (the default) it writes
nothing and reports what it would do.

How (see ``statements``): one scan snapshots the candidates into a temp table; batches
walk it by keyset, lock rows by primary key with SKIP LOCKED and re-check the whole
predicate at update time, so a concurrent completion always wins. When the snapshot is
used up, one count over the real table decides: nothing left (``done``), or another pass
over what is left (rows that were locked, or became candidates, meanwhile).

Stops only between batches: on ``max_batches``, ``max_seconds``, a KeyboardInterrupt
(the batch in flight rolls back and the sweep reports ``interrupted``), or a
``should_stop()`` callback.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import statements
from .errors import ReadOnlyError
from .params import Options
from .session import Conn, check_target, read_only, resolve_cutoff
from .target import Target

__all__ = ["BatchResult", "SweepResult", "sweep", "STOP_REASONS"]

STOP_REASONS = ("done", "dry_run", "max_batches", "max_seconds", "interrupted", "stop_requested", "remaining_locked")
_MAX_PASSES = 5


@dataclass(frozen=True)
class BatchResult:
    number: int
    selected: int  # snapshot entries this batch looked at
    changed: int  # rows it set to new_status (fewer when rows were locked or turned terminal)
    seconds: float
    committed_at: str


@dataclass
class SweepResult:
    """The outcome of one sweep; ``to_dict()`` is the machine-readable record."""

    target: dict[str, Any]
    options: dict[str, Any]
    cutoff_utc: datetime
    dry_run: bool
    candidates_at_start: int
    changed: int = 0
    batches: list[BatchResult] = field(default_factory=list)
    stop_reason: str = ""
    seconds: float = 0.0
    remaining: int | None = None  # counted at the end when cheap to know, else None
    would_change: int = 0  # dry run: rows the real sweep would change, at most
    would_batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cutoff_utc"] = self.cutoff_utc.isoformat() + "Z"
        return out


def _check_writable(conn: Conn, target: Target) -> None:
    table = statements.table(target).as_string(conn)
    row = conn.execute(
        "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'),"
        " has_table_privilege(%s, 'UPDATE'), current_user",
        [table],
    ).fetchone()
    if row and row[0]:
        raise ReadOnlyError("the server is a read-only standby (pg_is_in_recovery() is true): sweep refused, nothing written")
    if row and row[1] == "on":
        raise ReadOnlyError("default_transaction_read_only is on for this session: sweep refused, nothing written")
    if row and not row[2]:
        raise ReadOnlyError(
            f"role {row[3]} may not UPDATE {table}: sweep refused, nothing written "
            f"(GRANT SELECT, UPDATE ON {table} TO {row[3]}; or run inspect/preview only)"
        )


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sweep(
    conn: Conn,
    target: Target,
    opts: Options,
    *,
    on_batch: Callable[[SweepResult, BatchResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SweepResult:
    """Run the bounded sweep (or its dry run) and return what happened.

    Raises TargetNotFoundError, ReadOnlyError (before any write), or the psycopg error
    of a failed batch (that batch rolled back; every earlier batch stays committed).
    """
    started = time.monotonic()
    check_target(conn, target)
    with read_only(conn):
        cutoff = resolve_cutoff(conn, opts.stale_after_days, opts.cutoff)
    params: dict[str, Any] = {**target.predicate_params(), "cutoff": cutoff, "new_status": target.new_status}

    if opts.dry_run:
        with read_only(conn):
            row = conn.execute(statements.candidate_count(target), params).fetchone()
        count = int(row[0]) if row else 0
        return SweepResult(
            target=target.describe(), options=opts.to_dict(), cutoff_utc=cutoff, dry_run=True,
            candidates_at_start=count, stop_reason="dry_run", seconds=time.monotonic() - started, remaining=count,
            would_change=min(count, opts.batch_size * opts.max_batches),
            would_batches=min(math.ceil(count / opts.batch_size), opts.max_batches),
        )  # fmt: skip

    _check_writable(conn, target)
    result = SweepResult(
        target=target.describe(), options=opts.to_dict(), cutoff_utc=cutoff, dry_run=False, candidates_at_start=0
    )
    timeouts = {"lock_timeout": f"{int(opts.lock_timeout_s * 1000)}ms", "statement_timeout": f"{int(opts.statement_timeout_s * 1000)}ms"}

    def stop_reason() -> str | None:
        if len(result.batches) >= opts.max_batches:
            return "max_batches"
        if time.monotonic() - started >= opts.max_seconds:
            return "max_seconds"
        if should_stop is not None and should_stop():
            return "stop_requested"
        return None

    try:
        for pass_number in range(_MAX_PASSES):
            with conn.transaction():
                conn.execute("SELECT set_config('statement_timeout', %s, true)", [f"{int(opts.statement_timeout_s * 1000) * 10}ms"])
                stmts = statements.snapshot(target)
                for stmt in stmts:
                    cur = conn.execute(stmt, params)
                    if stmt is stmts[1]:
                        in_snapshot = cur.rowcount
            if pass_number == 0:
                result.candidates_at_start = in_snapshot
            changed_this_pass = 0
            after: tuple[Any, str] = (datetime.min, "")
            while True:
                reason = stop_reason()
                if reason:
                    result.stop_reason = reason
                    return result
                t0 = time.monotonic()
                with conn.transaction():
                    for name, value in timeouts.items():
                        conn.execute("SELECT set_config(%s, %s, true)", [name, value])
                    step = conn.execute(
                        statements.snapshot_next(),
                        {"after_t": after[0], "after_k": after[1], "batch_size": opts.batch_size},
                    ).fetchall()
                    if not step:
                        break
                    ids = [str(r[1]) for r in step]
                    changed = conn.execute(statements.batch_update(target), {**params, "ids": ids}).rowcount
                batch = BatchResult(len(result.batches) + 1, len(ids), changed, round(time.monotonic() - t0, 4), _utc_now())
                after = (step[-1][0], ids[-1])
                result.batches.append(batch)
                result.changed += changed
                changed_this_pass += changed
                if on_batch is not None:
                    on_batch(result, batch)
                if opts.pause_s:
                    time.sleep(opts.pause_s)
            with read_only(conn):
                row = conn.execute(statements.candidate_count(target), params).fetchone()
            result.remaining = int(row[0]) if row else 0
            if result.remaining == 0:
                result.stop_reason = "done"
                return result
            if changed_this_pass == 0:
                # Whatever is left is locked by other sessions or keeps changing under us:
                # stop rather than spin; a later run picks it up.
                result.stop_reason = "remaining_locked"
                return result
        result.stop_reason = "remaining_locked"
        return result
    except KeyboardInterrupt:
        # The transaction of the batch in flight has rolled back; earlier ones stand.
        result.stop_reason = "interrupted"
        return result
    finally:
        result.seconds = round(time.monotonic() - started, 4)
