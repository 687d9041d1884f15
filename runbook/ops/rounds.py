"""A round of a sweep: up to ``workers`` consecutive slices of the snapshot, written at once.

Each slice is one batch: its own transaction on its own connection (``runbook.workers``),
which updates the slice's rows still candidates and writes their ledger rows in the same
statement (``statements.batch_update``). A batch that hits lock_timeout, the runbook's own
statement_timeout or a deadlock rolls back and is retried with half the rows after a
growing pause, ``max_retries`` times; then it gives up. A statement canceled by request
(``pg_cancel_backend()`` from another session: a DBA) is never retried: ``Cancelled``
stops the sweep at once. Once a round is aborted (a second Ctrl-C), no batch starts a
statement or retries.

What a round leaves in the SweepResult, whatever happens: every batch that committed, in
order, before anything else runs (callbacks, exceptions), so the result, the record and
the ledger always agree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import psycopg

from ..sql import statements
from .live import BatchResult, set_batch_settings, utc_now
from ..rules.params import Options
from ..db.transactions import Conn
from ..rules.target import Target
from ..db.workers import Workers

if TYPE_CHECKING:
    from .sweep import SweepResult

__all__ = ["Keys", "Outcome", "Aborted", "BatchFailed", "Cancelled", "cancelled_by_request", "with_retries", "run_round"]

RETRYABLE = (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled, psycopg.errors.DeadlockDetected)
T = TypeVar("T")
Keys = list[tuple[Any, Any]]  # snapshot entries: (created_at, id)
Outcome = tuple[BatchResult, Keys] | None  # a committed batch and the keys it took; None: gave up


class Retried(Protocol):
    """What ``with_retries`` records into: a SweepResult, an UndoResult."""

    retries: list[str]
    stop_reason: str
    stop_detail: str


class Aborted(Exception):
    """The round was interrupted before this batch's statement started: nothing written."""


class Cancelled(Exception):
    """``what`` (a batch, the snapshot) was canceled by request, not by the runbook's own
    statement_timeout: someone means the sweep to stop. It rolled back; never retried."""

    def __init__(self, what: str, error: psycopg.errors.QueryCanceled) -> None:
        self.what, self.error = what, error
        super().__init__(
            f"{what} was canceled by request ({error.diag.message_primary}: pg_cancel_backend() on the run's "
            "backend, from another session such as a DBA's, or a client's cancel); it rolled back and was not retried"
        )


def cancelled_by_request(exc: BaseException) -> bool:
    """A QueryCanceled that is not a statement_timeout: PostgreSQL says "canceling statement
    due to user request" for pg_cancel_backend() and a client's cancel alike."""
    return isinstance(exc, psycopg.errors.QueryCanceled) and "statement timeout" not in (exc.diag.message_primary or "")


class BatchFailed(Exception):
    """Batch ``number`` raised ``error`` (unwrapped by ``sweep``), on a connection now lost or not."""

    def __init__(self, number: int, error: Exception, connection_lost: bool) -> None:
        super().__init__(number, error)
        self.number, self.error, self.connection_lost = number, error, connection_lost


def with_retries(
    work: Callable[[int], T], opts: Options, result: Retried, what: str, abort: threading.Event | None = None,
    max_timeouts: int | None = None,
) -> T | None:  # fmt: skip
    """``work(attempt)``; after a lock timeout, the runbook's own statement_timeout or a
    deadlock (rolled back) retry after a growing pause, ``max_retries`` times, and after
    at most ``max_timeouts`` statement timeouts (a full scan is not re-run on and on).
    None: gave up, with the reason in ``result``. Raises Cancelled for a cancel by request
    (never retried). Once ``abort`` is set nothing is started or retried: Aborted, or the
    cancel's error."""
    attempt = timeouts = 0
    while True:
        if abort is not None and abort.is_set():
            raise Aborted()
        try:
            return work(attempt)
        except RETRYABLE as exc:
            if abort is not None and abort.is_set():
                raise
            if cancelled_by_request(exc):
                raise Cancelled(what, exc) from exc  # type: ignore[arg-type]
            attempt += 1
            timeouts += isinstance(exc, psycopg.errors.QueryCanceled)
            note = f"{what} try {attempt}: {type(exc).__name__}: {exc.diag.message_primary}"
            result.retries.append(note)
            if attempt > opts.max_retries or (max_timeouts is not None and timeouts > max_timeouts):
                result.stop_reason, result.stop_detail = "gave_up", note
                return None
            print(f"{note}; retrying", flush=True)
            pause = min(0.25 * 2**attempt, 5.0)
            if abort is not None:
                abort.wait(pause)  # an abort cuts the pause short
            else:
                time.sleep(pause)


def write_batch(
    conn: Conn, target: Target, opts: Options, params: dict[str, Any], keys: Keys, batch: int, run_id: str,
    abort: threading.Event,
) -> tuple[int, int]:  # fmt: skip
    """One batch in its own transaction: the rows of ``keys`` updated and ledgered.
    Returns (rows changed, WAL bytes the server wrote meanwhile, every session's).
    Raises Aborted, writing nothing, when ``abort`` is set before its UPDATE starts."""
    with conn.transaction():
        wal_start = set_batch_settings(conn, opts)
        if abort.is_set():
            raise Aborted()
        row = conn.execute(
            statements.batch_update(target),
            {**params, "ids": [str(k[1]) for k in keys], "run_id": run_id, "batch": batch, "wal_start": wal_start},
        ).fetchone()
    return (int(row[0]), int(row[1] or 0)) if row else (0, 0)


def run_round(
    pool: Workers[Outcome], chunks: list[tuple[int, Keys]], *, target: Target, opts: Options, params: dict[str, Any],
    run_id: str, result: SweepResult, on_batch: Callable[[SweepResult, BatchResult], None] | None,
) -> list[tuple[BatchResult, Keys]] | None:  # fmt: skip
    """Write ``chunks`` (batch number, keys) at once, one per connection of ``pool``.

    Adds every committed batch to ``result`` (also when interrupted), then calls
    ``on_batch`` for each. Returns the committed batches with the keys each took (the
    last one's tell where the next round starts); None when a batch gave up (the reason
    is in ``result``). Raises BatchFailed for the first batch that failed otherwise.
    """

    def job(c: Conn, number: int, keys: Keys) -> Outcome:
        t0 = time.monotonic()
        tries: list[int] = []

        def attempt(n: int) -> tuple[Keys, int, int]:
            tries.append(n)  # a retry after a timeout takes half the rows each time
            used = keys[: max(1, len(keys) >> n)]
            return (used, *write_batch(c, target, opts, params, used, number, run_id, pool.abort))

        try:
            done = with_retries(attempt, opts, result, f"batch {number}", pool.abort)
        except Cancelled:
            pool.cancel_all(but=c)  # the sweep stops at once: its round partners roll back too
            raise
        if done is None:
            return None
        used, changed, wal = done
        seconds = round(time.monotonic() - t0, 4)
        return BatchResult(number, len(used), changed, seconds, utc_now(), tries[-1], wal), used

    try:
        outcomes = pool.run([partial(job, number=n, keys=k) for n, k in chunks])
    except BaseException:
        _keep(result, pool.finished)  # batches that committed before the abort reached them
        raise
    kept = _keep(result, dict(enumerate(outcomes)))
    if on_batch is not None:
        for batch, _ in kept:
            on_batch(result, batch)
    # A cancel by request first: the partners' errors are then the runbook's own cancels.
    failed = sorted((not isinstance(o, Cancelled), i) for i, o in enumerate(outcomes) if isinstance(o, Exception))
    if failed:
        i = failed[0][1]
        raise BatchFailed(chunks[i][0], outcomes[i], pool.lost(i))  # type: ignore[arg-type]
    return kept if len(kept) == len(chunks) else None


def _keep(result: SweepResult, outcomes: dict[int, Any]) -> list[tuple[BatchResult, Keys]]:
    """Add the committed batches among a round's ``outcomes`` (by job index) to ``result``,
    in order; return them."""
    kept = [outcomes[i] for i in sorted(outcomes) if isinstance(outcomes[i], tuple)]
    for batch, _ in kept:
        result.batches.append(batch)
        result.changed += batch.changed
    return kept
