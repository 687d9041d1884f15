"""When a writing run stops, and why: one value, ``Stop``, for every way a run can end.

Every step of a sweep or undo (a snapshot, a round of batches, a health pause, a pass)
returns a ``Stop`` when the run must end, and ``None`` when it goes on: a retry that gave
up, a statement canceled by a DBA, a failed batch and a second Ctrl-C all reach the run
the same way. The run then records the stop and, only once the ledger says how it ended,
raises the error the stop carries (if any) to its caller.

Between batches (rounds of batches, with several workers) a ``Stopper`` decides whether
to stop: the operator's limits, the stop file, a kernel interrupt, the caller's
``should_stop()``, a request in the ledger from any machine (``python -m runbook stop``). ``wait_until_healthy`` pauses while the database is unhealthy.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any, Protocol

import psycopg

from .. import logs
from ..db.health import Health, HealthLimits, check_health
from ..db.transactions import Conn
from ..rules.params import Options
from ..rules.states import StopReason
from ..rules.target import Target

__all__ = [
    "Stop", "Stopper", "error_text", "cancelled_by_request", "canceled_text", "interrupt_guard", "note_signals", "wait_until_healthy",
]  # fmt: skip

log = logs.get(__name__)


@dataclass(frozen=True)
class Stop:
    """Why a run stops. ``error``: what the run raises to its caller once it is recorded
    (None: the run ends normally with this reason). ``lost_batch``: the batch whose
    connection was lost, when that is how it failed."""

    reason: StopReason
    detail: str = ""
    error: BaseException | None = None
    lost_batch: int | None = None

    @classmethod
    def of_error(cls, exc: BaseException, what: str, lost_batch: int | None = None) -> Stop:
        """The stop an exception means: a second Ctrl-C interrupts (nothing to raise), a
        cancel by request (a DBA's ``pg_cancel_backend()``) is ``cancelled`` (recorded, not
        raised, never retried), anything else fails the run and is raised after it is recorded."""
        if isinstance(exc, KeyboardInterrupt):
            return cls(StopReason.INTERRUPTED, f"{type(exc).__name__}: {exc}")
        if cancelled_by_request(exc):
            return cls(StopReason.CANCELLED, canceled_text(what, exc))  # type: ignore[arg-type]
        return cls(StopReason.FAILED, error_text(exc), exc, lost_batch)


def error_text(exc: BaseException) -> str:
    """``Type: message`` for records and the ledger. A database error gives its SQLSTATE and
    primary message only: its DETAIL can quote a row ("Failing row contains (...)"), and the
    row may hold a prompt."""
    diag = getattr(exc, "diag", None)
    if isinstance(exc, psycopg.Error) and diag is not None and diag.message_primary:
        return f"{type(exc).__name__} ({diag.sqlstate}): {diag.message_primary}"
    return f"{type(exc).__name__}: {exc}"


def cancelled_by_request(exc: BaseException) -> bool:
    """A QueryCanceled that is not a statement_timeout: PostgreSQL says "canceling statement
    due to user request" for pg_cancel_backend() and a client's cancel alike."""
    return isinstance(exc, psycopg.errors.QueryCanceled) and "statement timeout" not in (exc.diag.message_primary or "")


def canceled_text(what: str, error: psycopg.errors.QueryCanceled) -> str:
    """The stop detail of ``what`` (a batch, the snapshot) canceled by request."""
    return (
        f"{what} was canceled by request ({error.diag.message_primary}: pg_cancel_backend() on the run's "
        "backend, from another session such as a DBA's, or a client's cancel); it rolled back and was not retried"
    )


@contextmanager
def interrupt_guard() -> Iterator[Callable[[], bool]]:
    """While active, the first SIGINT only raises a flag; a second one interrupts at once.

    Yields a function telling whether SIGINT arrived. Outside the main thread signals
    cannot be handled, and KeyboardInterrupt keeps its usual meaning.
    """
    flag = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: flag["hit"]
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag["hit"]:
            raise KeyboardInterrupt
        flag["hit"] = True
        log.warning("interrupt: stopping after the batches in flight (interrupt again to abort them)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag["hit"]
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Stopper:
    """Decides, between batches (rounds of batches, with several workers), whether to stop and why."""

    opts: Options
    started: float
    interrupted: Callable[[], bool]
    should_stop: Callable[[], bool] | None = None
    remote: Callable[[], str | None] | None = None  # who asked from elsewhere (python -m runbook stop), in words
    detail: str = ""  # what the stop reason does not say: who asked, and when

    def stop(self, reason: StopReason) -> Stop:
        """The ``Stop`` of ``reason``, with who asked when it was a request."""
        return Stop(reason, self.detail if reason is StopReason.STOP_REQUESTED else "")

    def reason(self, batches_done: int) -> StopReason | None:
        if self.interrupted():
            return StopReason.INTERRUPTED
        if self.opts.stop_file and os.path.exists(self.opts.stop_file):
            return StopReason.STOP_FILE
        if batches_done >= self.opts.max_batches:
            return StopReason.MAX_BATCHES
        if time.monotonic() - self.started >= self.opts.max_seconds:
            return StopReason.MAX_SECONDS
        if self.should_stop is not None and self.should_stop():
            self.detail = "stop requested by the caller (the panel's Stop)"
            return StopReason.STOP_REQUESTED
        if self.remote is not None and (asked := self.remote()):
            # One indexed read of the ledger per round: a request stops the run at the next boundary.
            self.detail = asked
            return StopReason.STOP_REQUESTED
        return None


class Paused(Protocol):
    """What ``wait_until_healthy`` records into: a SweepResult, an UndoResult."""

    pauses: list[dict[str, Any]]
    batches: list[Any]
    signals: dict[str, Any]


def note_signals(signals: dict[str, Any], health: Health) -> None:
    """Keep, in a run's ``signals``, what the health checks saw of the foreground: how many
    checks, the most sessions waiting on the table's locks, the worst replication lag, and
    whether a VACUUM of the table ran. After an incident this tells whether the run slowed LiteLLM."""
    signals["health_checks"] = signals.get("health_checks", 0) + 1
    signals["lock_waiters_max"] = max(signals.get("lock_waiters_max", 0), health.lock_waiters)
    signals["replication_lag_bytes_max"] = max(signals.get("replication_lag_bytes_max", 0), health.replication_lag_bytes)
    signals["vacuum_seen"] = bool(signals.get("vacuum_seen")) or health.vacuum_running
    signals["last"] = {"lock_waiters": health.lock_waiters, "replication_lag_bytes": health.replication_lag_bytes}


def wait_until_healthy(
    conn: Conn, target: Target, opts: Options, stopper: Stopper, result: Paused, batch: int, since: datetime | None
) -> StopReason | None:
    """Pause while the database is unhealthy, re-checking every ``health_pause_s``; append
    the pause to ``result.pauses``. Returns a stop reason when one came up meanwhile."""
    limits = HealthLimits(opts.max_replication_lag_bytes, opts.max_lock_waiters, opts.pause_during_vacuum)
    paused_at = time.monotonic()
    reasons: set[str] = set()
    stop: StopReason | None = None
    while not stop:
        health = check_health(conn, target, since)
        note_signals(result.signals, health)
        problems = health.problems(limits)
        if not problems:
            break
        if not reasons:
            log.info(f"pausing before batch {batch}: {'; '.join(problems)}")
        reasons.update(problems)
        time.sleep(opts.health_pause_s)
        stop = stopper.reason(len(result.batches))
    if reasons:
        result.pauses.append({"before_batch": batch, "reasons": sorted(reasons), "seconds": round(time.monotonic() - paused_at, 3)})
    return stop
