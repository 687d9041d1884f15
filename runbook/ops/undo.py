"""Undo: put back the previous status of exactly the rows one run changed.

What it writes: for each object the ledger says run ``of_run_id`` changed, when that
run's change is the object's latest change in the ledger (by any run on the table,
sweep or undo: ``changes.seq``) and the row still holds exactly what that change wrote,
``status = the status before that change``, in bounded batches, each with its own ledger
rows (the undo is a run too, with ``undoes_run_id`` set). Everything else is left alone
and counted by reason: changed (or deleted) since outside the ledger, changed by a later
run, already undone. ``dry_run=True`` (the default) writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from ..db import ledger
from ..sql import statements
from ..errors import ConnectionLostError, LedgerUnavailableError, UnknownRunError
from ..db.health import HealthLimits, blind_signals, refuse_blind
from .live import BatchResult, check_writable, close_run, live_run, publish_metrics, reconcile, set_batch_settings, utc_now, wait_until_healthy
from ..rules.params import Options
from ..audit.record import new_run_id
from .rounds import Cancelled, with_retries
from ..db.transactions import Conn, check_target, read_only
from ..rules.target import Target

__all__ = ["UndoResult", "undo"]


@dataclass
class UndoResult:
    of_run_id: str
    run_id: str | None
    dry_run: bool
    rows_in_ledger: int  # objects the undone run changed
    restorable: int  # of those, the run's change is the latest and still in place when the undo started
    restored: int = 0
    changed_since: int = 0  # the run's change is the latest in the ledger, but the row was changed or deleted since
    later_run: int = 0  # a later run (a sweep, or an undo of another run) changed it since: not touched
    already_undone: int = 0  # an undo of this run restored it
    batches: list[BatchResult] = field(default_factory=list)
    stop_reason: str = ""
    stop_detail: str = ""
    seconds: float = 0.0
    metrics_file: str | None = None
    warnings: list[str] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)  # batches retried after a lock or statement timeout
    pauses: list[dict[str, Any]] = field(default_factory=list)  # waits for the database to be healthy
    health_blind: list[str] = field(default_factory=list)  # health signals the role cannot see

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _counts(conn: Conn, target: Target, from_snapshot: bool, params: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(objects, restorable, changed since, already undone, later run): ``statements.undo_counts``."""
    row = conn.execute(statements.undo_counts(target, from_snapshot), params).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4])


def undo(
    conn: Conn, target: Target, opts: Options, *, of_run_id: str, run_id: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> UndoResult:  # fmt: skip
    """Restore the rows run ``of_run_id`` changed (or count them, in a dry run).

    Writes (live only) the restored rows' status and the undo run's ledger rows; the runs
    row is closed with the stop reason whatever happens (a metrics file that cannot be
    written is a warning). Raises UnknownRunError when the ledger has no such sweep run,
    LedgerUnavailableError (also in a dry run) when an older version's ledger was not upgraded,
    and, before any write, ReadOnlyError, LedgerUnavailableError, SweepInProgressError,
    ParameterError (a ``run_id`` that names another run). A lost connection raises
    ConnectionLostError once the restored batches were checked against the ledger on a
    new connection, which also closes the runs row.
    """
    started = time.monotonic()
    check_target(conn, target)
    params = {"of_run": of_run_id, "target_name": f"{target.schema}.{target.table}"}
    with read_only(conn):
        info = ledger.run_info(conn, of_run_id)
        if info is None or info["kind"] != "sweep":
            raise UnknownRunError(f"run_id={of_run_id!r} is not a sweep run in the ledger ({ledger.SCHEMA}.runs)")
        if "changes.seq" in ledger.missing_columns(conn):
            raise LedgerUnavailableError(
                f"the ledger in schema {ledger.SCHEMA} was created by an older version of the runbook: it lacks the order "
                "of changes (changes.seq) undo needs to tell which change of a row is the latest. Ask the ledger's owner "
                "to run: python -m runbook ledger init"
            )
        if info["target"] != f"{target.schema}.{target.table}":
            raise UnknownRunError(
                f"run_id={of_run_id!r} swept {info['target']}, not {target.schema}.{target.table}: "
                "undo it on the schema it swept (DATABASE_URL's ?schema= option)"
            )
        if opts.dry_run:
            total, restorable, since, undone, later = _counts(conn, target, False, params)
    if opts.dry_run:
        result = UndoResult(of_run_id, None, True, total, restorable, changed_since=since, later_run=later, already_undone=undone)
        result.stop_reason = "dry_run"
        result.seconds = round(time.monotonic() - started, 4)
        return result

    rid = run_id or new_run_id()
    result = UndoResult(of_run_id, rid, False, 0, 0)
    parameters = parameters or {"of_run_id": of_run_id, **opts.to_dict()}
    table_name = f"{target.schema}.{target.table}"
    check_writable(conn, target)  # as the sweep: may it write at all, then what it cannot see
    role, blind = blind_signals(conn, HealthLimits(pause_during_vacuum=opts.pause_during_vacuum))
    if blind:
        result.health_blind = [refuse_blind(role, blind, live=True, allow=opts.allow_blind_health)]
        print(result.health_blind[0], flush=True)
    with live_run(conn, target, opts, kind="undo", run_id=rid, parameters=parameters, undoes_run_id=of_run_id) as run:
        try:
            # Under the target's lock: no other run of the runbook changes these objects meanwhile.
            with conn.transaction():
                for statement in statements.undo_snapshot(target):
                    conn.execute(statement, params)
                total, restorable, since, undone, later = _counts(conn, target, True, params)
            result.rows_in_ledger, result.restorable = total, restorable
            result.already_undone, result.later_run = undone, later
            next_batch = run.first_batch
            after = 2**63 - 1
            examined = 0
            began = conn.execute(statements.run_start()).fetchone()[0]  # type: ignore[index]
            while not (reason := run.stopper.reason(len(result.batches))
                       or wait_until_healthy(conn, target, opts, run.stopper, result, next_batch, began)):  # fmt: skip
                t0 = time.monotonic()

                def attempt(n: int) -> tuple[list[Any], Any]:  # a retry takes half the rows each time
                    with conn.transaction():
                        set_batch_settings(conn, opts)
                        todo = conn.execute(
                            statements.undo_next(), {**params, "after_seq": after, "batch_size": max(1, opts.batch_size >> n)}
                        ).fetchall()
                        if not todo:
                            return todo, None
                        return todo, conn.execute(
                            statements.undo_update(target),
                            {
                                "ids": [r[0] for r in todo], "previous": [r[1] for r in todo], "expected": [r[2] for r in todo],
                                "run_id": rid, "batch": next_batch,
                            },
                        ).fetchone()  # fmt: skip

                done = with_retries(attempt, opts, result, f"batch {next_batch}")
                if done is None:
                    reason = "gave_up"  # the reason is in stop_detail
                    break
                todo, row = done
                if not todo:
                    reason = "done"
                    break
                restored = int(row[0]) if row else 0
                result.batches.append(BatchResult(next_batch, len(todo), restored, round(time.monotonic() - t0, 4), utc_now()))
                result.restored += restored
                examined += len(todo)
                result.changed_since = examined - result.restored
                after = int(todo[-1][3])
                next_batch += 1
            result.stop_reason = reason
        except BaseException as exc:
            if isinstance(exc, Cancelled):  # pg_cancel_backend() by a DBA: stop, recorded, not retried
                result.stop_reason, result.stop_detail = "cancelled", str(exc)
                return result  # (the runs row is closed below)
            result.stop_reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            result.stop_detail = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, psycopg.OperationalError) and (conn.broken or conn.closed):
                lost = result.batches[-1].number + 1 if result.batches else run.first_batch
                stands = _reconcile(conn, target, result, run.first_batch)
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ConnectionLostError(
                    f"the connection to the database was lost during batch {lost} of undo run {rid} ({first_line}): that "
                    f"batch rolled back; {stands} Run again with undo_run_id={rid} to finish."
                ) from exc
            raise
        finally:
            result.seconds = round(time.monotonic() - started, 4)
            result.stop_reason = result.stop_reason or "failed"
            result.metrics_file = publish_metrics(
                opts.metrics_dir, result.warnings, run_id=rid, kind="undo", table=table_name, rows_changed=result.restored,
                rows_remaining=None, batch_seconds=[b.seconds for b in result.batches], outcome=result.stop_reason,
                run_seconds=result.seconds, finished=True,
            )  # fmt: skip
            close_run(conn, rid, result.stop_reason, result.to_dict())  # a no-op on a lost connection
    return result


def _reconcile(conn: Conn, target: Target, result: UndoResult, first_batch: int) -> str:
    """After a lost connection: keep in ``result`` only the batches the ledger holds and close
    the runs row on a new connection (``liverun.reconcile``); return what stands, as a sentence."""

    def settle(kept: list[BatchResult], lost: list[int]) -> dict[str, Any]:
        result.batches = kept
        result.restored = sum(b.changed for b in kept)
        if lost:
            result.stop_detail += f"; batch(es) {', '.join(map(str, lost))} were acknowledged but are not in the ledger"
        return result.to_dict()

    done = reconcile(conn, target, str(result.run_id), first_batch, result.batches, result.stop_reason, settle)
    if done is None:
        return f"{len(result.batches)} other batch(es) were acknowledged; the server could not be reached again to check them."
    kept, lost = done
    text = f"the {len(kept)} other batch(es) committed so far stand with their ledger ({result.restored:,} rows restored)."
    if lost:
        text += f" Batch(es) {', '.join(map(str, lost))} were acknowledged but are not in the ledger (asynchronous commit)."
    return text
