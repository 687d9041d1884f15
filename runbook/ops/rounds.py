"""A round of a sweep: up to ``workers`` consecutive slices of the snapshot, written at once.

Each slice is one batch: its own transaction on its own connection (``runbook.db.workers``),
which updates the slice's rows still candidates and writes their ledger rows in the same
statement (``sql.candidates.batch_update``). A batch that hits lock_timeout, the runbook's
own statement_timeout or a deadlock rolls back and is retried with half the rows after a
growing pause, ``max_retries`` times; then it gives up. A statement canceled by request
(``pg_cancel_backend()`` from another session: a DBA) is never retried: it stops the sweep
at once, and its round partners are canceled too. Once a round is aborted (a second
Ctrl-C), no batch starts a statement or retries.

Nothing here writes into the caller's result: ``with_retries`` returns a ``Tried`` and
``run_round`` a ``Round``, each with the retries it made and the ``Stop`` it ended with.
A round's committed batches are in its ``Round`` whatever happened (an interrupt
included), so the result, the record and the ledger always agree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import psycopg

from .. import logs
from ..audit import archive
from ..db.transactions import Conn
from ..db.workers import Workers
from ..rules.params import Options
from ..rules.states import StopReason
from ..rules.target import Target
from ..sql import candidates, removal
from .live import BatchResult, set_batch_settings, utc_now
from .stops import Stop, canceled_text, cancelled_by_request

__all__ = ["Keys", "Archiving", "Tried", "Round", "with_retries", "run_round"]

log = logs.get(__name__)

# ProgramLimitExceeded: a delete or clear batch whose archive lines pass PostgreSQL's 1 GB
# value limit (rows of huge payloads); half the rows fit.
RETRYABLE = (
    psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled, psycopg.errors.DeadlockDetected,
    psycopg.errors.ProgramLimitExceeded,
)  # fmt: skip
T = TypeVar("T")
Keys = list[tuple[Any, Any]]  # snapshot entries: (created_at, id)


@dataclass(frozen=True)
class Archiving:
    """How a delete or clear batch archives its rows: the folder (None: ``archive=False``,
    no archive) and the table's json/jsonb columns (whose SQL NULLs each line names)."""

    root: Path | None
    json_columns: tuple[str, ...]


class _Aborted(Exception):
    """The round was interrupted before this batch's statement started: nothing written."""


@dataclass(frozen=True)
class Tried(Generic[T]):
    """What ``with_retries`` did: the work's ``value`` (None when it stopped), one note per
    failed try, and the ``stop`` it ended with (gave up, canceled by request, aborted)."""

    value: T | None = None
    notes: list[str] = field(default_factory=list)
    stop: Stop | None = None


def with_retries(
    work: Callable[[int], T], opts: Options, what: str, abort: threading.Event | None = None,
    max_timeouts: int | None = None,
) -> Tried[T]:  # fmt: skip
    """``work(attempt)``; after a lock timeout, the runbook's own statement_timeout or a
    deadlock (rolled back) retry after a growing pause, ``max_retries`` times, and after
    at most ``max_timeouts`` statement timeouts (a full scan is not re-run on and on).
    A cancel by request is never retried (``cancelled``). Once ``abort`` is set nothing is
    started or retried. Any other error propagates."""
    notes: list[str] = []
    attempt = timeouts = 0
    while True:
        try:
            if abort is not None and abort.is_set():
                raise _Aborted()
            return Tried(work(attempt), notes)
        except _Aborted:
            return Tried(None, notes, Stop(StopReason.INTERRUPTED, f"{what}: aborted before its statement started"))
        except RETRYABLE as exc:
            if cancelled_by_request(exc) and not (abort is not None and abort.is_set()):
                return Tried(None, notes, Stop(StopReason.CANCELLED, canceled_text(what, exc)))  # type: ignore[arg-type]
            if abort is not None and abort.is_set():  # canceled by the runbook itself: the round is aborted
                return Tried(None, notes, Stop(StopReason.INTERRUPTED, f"{what}: canceled, the round was aborted"))
            attempt += 1
            timeouts += isinstance(exc, psycopg.errors.QueryCanceled)
            note = f"{what} try {attempt}: {type(exc).__name__}: {exc.diag.message_primary}"
            notes.append(note)
            if attempt > opts.max_retries or (max_timeouts is not None and timeouts > max_timeouts):
                return Tried(None, notes, Stop(StopReason.GAVE_UP, note))
            log.info(f"{note}; retrying")
            pause = min(0.25 * 2**attempt, 5.0)
            if abort is not None:
                abort.wait(pause)  # an abort cuts the pause short
            else:
                time.sleep(pause)


def write_batch(
    conn: Conn, target: Target, opts: Options, params: dict[str, Any], keys: Keys, batch: int, run_id: str,
    abort: threading.Event, archiving: Archiving | None = None,
) -> tuple[int, int, int]:  # fmt: skip
    """One batch in its own transaction: the rows of ``keys`` still candidates changed
    (marked, deleted or cleared, as the target says) and ledgered. Returns (rows changed,
    WAL bytes the server wrote meanwhile, every session's; archive bytes before compression).
    Writes nothing when ``abort`` is set before its statement starts.

    A delete or clear batch first locks its rows and writes them to the archive (a file,
    fsynced) before the statement that removes them and records the file's sha256 runs:
    no row is removed unless its archive file is on disk. RuntimeError (the batch rolls
    back) should the removal not match the rows archived."""
    ids = [str(k[1]) for k in keys]
    with conn.transaction():
        wal_start = set_batch_settings(conn, opts)
        if abort.is_set():
            raise _Aborted()  # rolls the transaction back
        if target.marks:
            row = conn.execute(
                candidates.batch_update(target),
                {**params, "ids": ids, "run_id": run_id, "batch": batch, "wal_start": wal_start},
            ).fetchone()
            return (int(row[0]), int(row[1] or 0), 0) if row else (0, 0, 0)
        assert archiving is not None, "a delete or clear target needs its Archiving"
        statement = removal.archive_rows(target, archiving.json_columns, lines=archiving.root is not None)
        locked = conn.execute(statement, {**params, "ids": ids}).fetchone()
        assert locked is not None
        tids, lines, count = str(locked[0]), str(locked[1]), int(locked[2])
        saved = archive.write_batch(archiving.root, run_id, batch, lines, count) if archiving.root and count else None
        remove = removal.delete_batch(target) if target.action == "delete" else removal.clear_batch(target)
        row = conn.execute(remove, {
            "tids": tids, "run_id": run_id, "batch": batch, "wal_start": wal_start,
            "archive_file": saved.name if saved else None, "archive_sha256": saved.sha256 if saved else None,
            "archive_rows": saved.rows if saved else None,
        }).fetchone()  # fmt: skip
        assert row is not None
        if int(row[0]) != count:
            raise RuntimeError(f"batch {batch}: {row[0]} rows {target.action}d but {count} locked and archived; rolled back")
    return int(row[0]), int(row[1] or 0), len(lines)


@dataclass(frozen=True)
class Round:
    """What a round did: its committed batches in order, each with the keys it took (the
    last one's tell where the next round starts), the retries its batches made, and the
    ``Stop`` it ended with (None: every batch committed)."""

    committed: list[tuple[BatchResult, Keys]]
    notes: list[str]
    stop: Stop | None


_Job = Tried[tuple[BatchResult, Keys]]  # a job's outcome: its batch and keys when it committed


def run_round(
    pool: Workers[_Job], chunks: list[tuple[int, Keys]], *, target: Target, opts: Options, params: dict[str, Any],
    run_id: str, archiving: Archiving | None = None,
) -> Round:  # fmt: skip
    """Write ``chunks`` (batch number, keys) at once, one per connection of ``pool``.

    Returns every batch that committed, also when the round was interrupted or a batch
    failed; the round's stop is the most telling of its batches' (a cancel by request
    first, then an error, in batch order, then a give-up, then an interrupt)."""

    def job(c: Conn, number: int, keys: Keys) -> _Job:
        t0 = time.monotonic()
        tries: list[int] = []

        def attempt(n: int) -> tuple[Keys, int, int, int]:
            tries.append(n)  # a retry after a timeout takes half the rows each time
            used = keys[: max(1, len(keys) >> n)]
            return (used, *write_batch(c, target, opts, params, used, number, run_id, pool.abort, archiving))

        tried = with_retries(attempt, opts, f"batch {number}", pool.abort)
        if tried.value is None:
            if tried.stop is not None and tried.stop.reason is StopReason.CANCELLED:
                pool.cancel_all(but=c)  # the sweep stops at once: its round partners roll back too
            return Tried(None, tried.notes, tried.stop)
        used, changed, wal, archived = tried.value
        batch = BatchResult(number, len(used), changed, round(time.monotonic() - t0, 4), utc_now(), tries[-1], wal, archived)
        return Tried((batch, used), tried.notes)

    interrupted: Stop | None = None
    try:
        outcomes: dict[int, _Job | Exception] = dict(enumerate(pool.run([partial(job, number=n, keys=k) for n, k in chunks])))
    except BaseException as exc:  # a second Ctrl-C: what committed before the abort reached it stands
        outcomes, interrupted = dict(pool.finished), Stop.of_error(exc, "a round of batches")
    committed = [o.value for _, o in sorted(outcomes.items()) if isinstance(o, Tried) and o.value is not None]
    notes = [note for _, o in sorted(outcomes.items()) if isinstance(o, Tried) for note in o.notes]
    stops: list[tuple[int, int, Stop]] = []
    for i, outcome in sorted(outcomes.items()):
        if isinstance(outcome, Exception):
            number = chunks[i][0]
            stop = Stop.of_error(outcome, f"batch {number}", number if pool.lost(i) else None)
            stops.append((_RANK[stop.reason], i, stop))
        elif isinstance(outcome, Tried) and outcome.stop is not None:
            stops.append((_RANK[outcome.stop.reason], i, outcome.stop))
    if interrupted is not None:
        stops.append((_RANK[interrupted.reason], len(chunks), interrupted))
    return Round(committed, notes, min(stops, key=lambda s: (s[0], s[1]))[2] if stops else None)


# Which batch's stop is the round's: a DBA's cancel explains its partners' cancels; an
# error outranks a give-up; an interrupt (or an abort it caused) explains least.
_RANK = {StopReason.CANCELLED: 0, StopReason.FAILED: 1, StopReason.GAVE_UP: 2, StopReason.INTERRUPTED: 3}
