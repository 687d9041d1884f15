"""Undo: put back the previous status of exactly the rows one run changed.

What it writes: for each row the ledger says run ``of_run_id`` changed and that still
has that run's new status, ``status = previous status``, in bounded batches, each with its
own ledger rows (the undo is a run too, with ``undoes_run_id`` set). Rows that changed
again since are left alone and counted. ``dry_run=True`` (the default) writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from psycopg import sql

from . import ledger, statements
from .errors import UnknownRunError
from .liverun import BatchResult, close_run, live_run, set_batch_settings, utc_now
from .metrics import write_metrics
from .params import Options
from .record import new_run_id
from .session import Conn, check_target, read_only
from .target import Target

__all__ = ["UndoResult", "undo"]


@dataclass
class UndoResult:
    of_run_id: str
    run_id: str | None
    dry_run: bool
    rows_in_ledger: int  # rows the undone run changed
    restorable: int  # of those, still in the run's new status when the undo started
    restored: int = 0
    left_alone: int = 0  # changed again since: not touched
    already_undone: int = 0
    batches: list[BatchResult] = field(default_factory=list)
    stop_reason: str = ""
    seconds: float = 0.0
    metrics_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _counts(conn: Conn, target: Target, of_run_id: str) -> tuple[int, int, int]:
    """(rows the run changed, of them still in its new status, of them already undone)."""
    row = conn.execute(
        sql.SQL(
            "WITH latest AS (SELECT DISTINCT ON (object_id) object_id, new_status FROM {changes}"
            " WHERE run_id = %(r)s ORDER BY object_id, batch DESC),"
            " undone AS (SELECT DISTINCT d.object_id FROM {changes} d JOIN {runs} u ON u.run_id = d.run_id"
            " WHERE u.undoes_run_id = %(r)s)"
            " SELECT count(*), count(*) FILTER (WHERE t.{status} = latest.new_status"
            " AND latest.object_id NOT IN (SELECT object_id FROM undone)),"
            " count(*) FILTER (WHERE latest.object_id IN (SELECT object_id FROM undone))"
            " FROM latest LEFT JOIN {table} t ON t.{key} = latest.object_id"
        ).format(
            changes=sql.Identifier(ledger.SCHEMA, "changes"),
            runs=sql.Identifier(ledger.SCHEMA, "runs"),
            table=statements.table(target),
            status=sql.Identifier(target.status_column),
            key=sql.Identifier(target.key_column),
        ),
        {"r": of_run_id},
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def undo(
    conn: Conn, target: Target, opts: Options, *, of_run_id: str, run_id: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> UndoResult:  # fmt: skip
    """Restore the rows run ``of_run_id`` changed (or count them, in a dry run).

    Raises UnknownRunError when the ledger has no such sweep run, and, before any write,
    ReadOnlyError, LedgerUnavailableError, SweepInProgressError.
    """
    started = time.monotonic()
    check_target(conn, target)
    with read_only(conn):
        info = ledger.run_info(conn, of_run_id)
        if info is None or info["kind"] != "sweep":
            raise UnknownRunError(f"run_id={of_run_id!r} is not a sweep run in the ledger ({ledger.SCHEMA}.runs)")
        if info["target"] != f"{target.schema}.{target.table}":
            raise UnknownRunError(
                f"run_id={of_run_id!r} swept {info['target']}, not {target.schema}.{target.table}: "
                "undo it on the schema it swept (DATABASE_URL's ?schema= option)"
            )
        total, restorable, already = _counts(conn, target, of_run_id)
    result = UndoResult(of_run_id, None, opts.dry_run, total, restorable, already_undone=already)
    if opts.dry_run:
        result.left_alone = total - restorable - already
        result.stop_reason = "dry_run"
        result.seconds = round(time.monotonic() - started, 4)
        return result

    rid = run_id or new_run_id()
    result.run_id = rid
    parameters = parameters or {"of_run_id": of_run_id, **opts.to_dict()}
    with live_run(conn, target, opts, kind="undo", run_id=rid, parameters=parameters, undoes_run_id=of_run_id) as run:
        next_batch = run.first_batch
        after: tuple[int, str] = (2**31 - 1, "")
        try:
            while not (reason := run.stopper.reason(len(result.batches))):
                t0 = time.monotonic()
                with conn.transaction():
                    set_batch_settings(conn, opts)
                    todo = conn.execute(
                        statements.undo_next(),
                        {
                            "of_run": of_run_id, "run_id": rid, "first_batch": run.first_batch,
                            "after_batch": after[0], "after_object": after[1], "batch_size": opts.batch_size,
                        },  # fmt: skip
                    ).fetchall()
                    if not todo:
                        reason = "done"
                        break
                    # An object changed twice by the run: only its newest change (first here).
                    newest = list({r[0]: r for r in reversed(todo)}.values())
                    row = conn.execute(
                        statements.undo_update(target),
                        {
                            "ids": [r[0] for r in newest], "previous": [r[1] for r in newest],
                            "swept_status": todo[0][2], "run_id": rid, "batch": next_batch,
                        },
                    ).fetchone()  # fmt: skip
                restored = int(row[0]) if row else 0
                result.batches.append(BatchResult(next_batch, len(todo), restored, round(time.monotonic() - t0, 4), utc_now()))
                result.restored += restored
                result.left_alone += len(todo) - restored
                after = (int(todo[-1][3]), str(todo[-1][0]))
                next_batch += 1
            result.stop_reason = reason
        finally:
            result.seconds = round(time.monotonic() - started, 4)
            result.stop_reason = result.stop_reason or "failed"
            if opts.metrics_dir:
                result.metrics_file = str(
                    write_metrics(
                        opts.metrics_dir, run_id=rid, kind="undo", table=f"{target.schema}.{target.table}",
                        rows_changed=result.restored, rows_remaining=None,
                        batch_seconds=[b.seconds for b in result.batches], outcome=result.stop_reason,
                        run_seconds=result.seconds, finished=True,
                    )  # fmt: skip
                )
            close_run(conn, rid, result.stop_reason, result.to_dict())
    return result
