"""Undo: put back exactly what one run changed: the previous status, or the archived rows.

A delete or clear run is undone from its archive (``runbook.ops.restore``): the deleted
rows inserted back exactly as they were (a row whose key exists again is left alone and
counted), the cleared payloads put back where the columns still hold ``'{}'``. Every
archive file its ledger names is checked against the sha256 its batch committed before
anything is written. What follows is the undo of a mark run.

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
from functools import partial
from typing import Any

from .. import logs
from ..audit.record import new_run_id
from ..db import control, ledger
from ..db.health import HealthLimits, blind_signals, refuse_blind
from ..db.transactions import Conn, check_target, read_only
from ..errors import LedgerUnavailableError, UnknownRunError
from ..rules.params import Options
from ..rules.states import Kind, StopReason
from ..rules.target import DEFAULT_TARGET, Target
from ..rules.targets import CATALOGUE, target_named
from ..sql import catalog
from ..sql import undo as undo_sql
from .restore import restorable_now, restore_from_archive, verify_archive
from .live import BatchResult, LiveRun, MetricsFile, check_writable, end_run, live_run, set_batch_settings, utc_now
from .rounds import with_retries
from .stops import Stop, wait_until_healthy

__all__ = ["UndoResult", "undo", "target_of_run"]

log = logs.get(__name__)


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
    # What the run saw of the foreground between rounds (lock waiters, replication lag, its
    # own lock timeouts) and how long the rate budget held it back (ops.stops.note_signals).
    signals: dict[str, Any] = field(default_factory=dict)
    action: str = "mark"  # the undone run's: mark (statuses from the ledger), delete or clear (rows from the archive)

    @property
    def rows_changed(self) -> int:
        return self.restored

    def keep_batches(self, kept: list[BatchResult]) -> None:
        """Keep only ``kept`` (the batches the ledger holds, after a lost connection)."""
        self.batches = kept
        self.restored = sum(b.changed for b in kept)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _counts(conn: Conn, target: Target, from_snapshot: bool, params: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(objects, restorable, changed since, already undone, later run): ``undo_sql.undo_counts``."""
    row = conn.execute(undo_sql.undo_counts(target, from_snapshot), params).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4])


def target_of_run(conn: Conn, of_run_id: str, given: Target) -> Target:
    """The target to undo run ``of_run_id`` with: ``given``, unless that is the default target
    and the ledger says the run swept another one of the catalogue (undo needs no target). Reads only."""
    if given.name != DEFAULT_TARGET:
        return given
    with read_only(conn):
        info = ledger.run_info(conn, of_run_id)
    ran = info["rule"] if info else None
    return target_named(ran, given.schema) if ran and ran in CATALOGUE else given


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
    target = target_of_run(conn, of_run_id, target)
    check_target(conn, target)
    params = {"of_run": of_run_id, "target_name": f"{target.schema}.{target.table}"}
    with read_only(conn):
        info = ledger.run_info(conn, of_run_id)
        if info is None or info["kind"] != Kind.SWEEP:
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
        ran = info["rule"] or DEFAULT_TARGET
        if ran != target.name and (ran not in CATALOGUE or CATALOGUE[ran].target.action != target.action):
            # Two mark targets of one table are undone alike (from the ledger's statuses);
            # a delete is undone by re-inserting, a clear by restoring payloads: never swapped.
            raise UnknownRunError(
                f"run_id={of_run_id!r} swept target {info['rule'] or DEFAULT_TARGET}, not {target.name}: "
                f"undo it with -p target {info['rule'] or DEFAULT_TARGET}"
            )
        if not target.marks:
            done = [u for u in ledger.undos_of(conn, of_run_id) if u["stop_reason"] == StopReason.DONE and u["run_id"] != run_id]
            if done:
                # Re-inserting again would bring back rows a later run deleted since: a delete
                # run's undo is done once (a stopped one is resumed with its own undo_run_id).
                raise UnknownRunError(
                    f"run_id={of_run_id!r} was already undone by run {done[0]['run_id']}: undoing it again could bring "
                    "back rows a later run deleted; nothing written"
                )
            files = verify_archive(conn, of_run_id, opts)
        if opts.dry_run and target.marks:
            total, restorable, since, undone, later = _counts(conn, target, False, params)
    if opts.dry_run and not target.marks:
        archived, now = sum(f.rows for f in files), restorable_now(conn, target, files)
        result = UndoResult(
            of_run_id, None, True, archived, now, changed_since=archived - now, stop_reason=StopReason.DRY_RUN,
            action=target.action,
        )  # fmt: skip
        result.seconds = round(time.monotonic() - started, 4)
        return result
    if opts.dry_run:
        result = UndoResult(of_run_id, None, True, total, restorable, changed_since=since, later_run=later, already_undone=undone)
        result.stop_reason = StopReason.DRY_RUN
        result.seconds = round(time.monotonic() - started, 4)
        return result

    rid = run_id or new_run_id()
    result = UndoResult(of_run_id, rid, False, 0, 0, action=target.action)
    parameters = parameters or {"of_run_id": of_run_id, **opts.to_dict()}
    check_writable(conn, target, restore=True)  # as the sweep: may it write at all, then what it cannot see
    role, blind = blind_signals(conn, HealthLimits(pause_during_vacuum=opts.pause_during_vacuum))
    if blind:
        result.health_blind = [refuse_blind(role, blind, live=True, allow=opts.allow_blind_health)]
        log.warning(result.health_blind[0])
    metrics = MetricsFile(opts, rid, Kind.UNDO, target, started)
    with live_run(conn, target, opts, kind=Kind.UNDO, run_id=rid, parameters=parameters, undoes_run_id=of_run_id) as run:
        try:
            if target.marks:
                stop = _restore(conn, target, opts, params, result, run)
            else:
                result.rows_in_ledger = result.restorable = sum(f.rows for f in files)
                control.note_candidates(conn, rid, result.restorable)
                stop = restore_from_archive(conn, target, opts, files, result, run)
        except BaseException as exc:  # an error between batches, a second Ctrl-C
            stop = Stop.of_error(exc, "a statement of the undo")
        error = end_run(conn, target, run, result, stop, metrics, started, remaining=None)
    if error is not None:
        raise error
    return result


def _restore(conn: Conn, target: Target, opts: Options, params: dict[str, Any], result: UndoResult, run: LiveRun) -> Stop:
    """Snapshot what the undone run changed, then restore it batch by batch, newest change
    first, until nothing is left or a stop; return that stop. Under the target's lock: no
    other run of the runbook changes these objects meanwhile."""
    with conn.transaction():
        for statement in undo_sql.undo_snapshot(target):
            conn.execute(statement, params)
        total, restorable, since, undone, later = _counts(conn, target, True, params)
    result.rows_in_ledger, result.restorable = total, restorable
    control.note_candidates(conn, str(result.run_id), restorable)
    result.already_undone, result.later_run = undone, later
    row = conn.execute(catalog.run_start()).fetchone()
    began = row[0] if row else None
    after, examined, batch = 2**63 - 1, 0, run.first_batch
    while True:
        reason = run.stopper.reason(len(result.batches)) or wait_until_healthy(
            conn, target, opts, run.stopper, result, batch, began
        )
        if reason:
            return run.stopper.stop(reason)
        t0 = time.monotonic()
        work = partial(_restore_batch, conn, target, opts, params, after=after, batch=batch, run_id=str(result.run_id))
        tried = with_retries(work, opts, f"batch {batch}")
        result.retries += tried.notes
        if tried.value is None:
            assert tried.stop is not None
            return tried.stop
        todo, restored = tried.value
        if not todo:
            return Stop(StopReason.DONE)
        result.batches.append(BatchResult(batch, len(todo), restored, round(time.monotonic() - t0, 4), utc_now()))
        result.restored += restored
        examined += len(todo)
        result.changed_since = examined - result.restored
        after = int(todo[-1][3])
        batch += 1


def _restore_batch(
    conn: Conn, target: Target, opts: Options, params: dict[str, Any], attempt: int, *, after: int, batch: int, run_id: str
) -> tuple[list[Any], int]:  # fmt: skip
    """One batch in its own transaction: the next ledger changes of the undone run (newest
    first, before ``after``), restored where still in place, with their ledger rows.
    A retry (``attempt`` > 0) takes half the rows each time. Returns (the changes, rows restored)."""
    with conn.transaction():
        set_batch_settings(conn, opts)
        todo = conn.execute(
            undo_sql.undo_next(), {**params, "after_seq": after, "batch_size": max(1, opts.batch_size >> attempt)}
        ).fetchall()
        if not todo:
            return todo, 0
        row = conn.execute(
            undo_sql.undo_update(target),
            {
                "ids": [r[0] for r in todo], "previous": [r[1] for r in todo], "expected": [r[2] for r in todo],
                "run_id": run_id, "batch": batch,
            },
        ).fetchone()  # fmt: skip
    return todo, int(row[0]) if row else 0
