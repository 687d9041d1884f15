"""Writing connections: a sweep writes up to ``workers`` batches at once, one per connection.

Why: a single backend updating rows is bound by one CPU core (building the new row
versions, six index entries each and their WAL), while the server has more. Two
batches in flight, each its own short transaction on its own connection, drained the
300K-row benchmark in 0.75-0.80x the time of one unbounded UPDATE instead of 1.04-1.16x
(bench/RESULTS.md). The batches of one round are disjoint, consecutive slices of the
candidates, oldest first, and the round ends when every one of them has committed or
rolled back; nothing is handed out past a stop.

The first batch of a round runs on the caller's connection, in the caller's thread (so a
sweep with one worker is exactly a plain loop); the others run on helper connections to
the same server, opened on first use (``connect.connect_like``: the caller's connection
parameters, credentials included and never shown) and closed at the end. A
KeyboardInterrupt in the caller (a second Ctrl-C) sets ``abort`` (jobs check it before
each statement and never retry after it), cancels the statements still running on
helpers, waits for every job to end and re-raises.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Generic, TypeVar

import psycopg

from .. import logs
from .connect import connect_like
from .transactions import Conn

__all__ = ["Workers"]

log = logs.get(__name__)

T = TypeVar("T")
Job = Callable[[Conn], T]


class Workers(Generic[T]):
    """Runs rounds of jobs, job ``i`` on connection ``i`` (0: the caller's); a context
    manager that closes the helpers on exit."""

    def __init__(self, conn: Conn, count: int) -> None:
        self.conn = conn
        self.count = count
        self.abort = threading.Event()  # set when a round is interrupted: jobs must stop, not retry
        self.finished: dict[int, T | Exception] = {}  # the last round's outcomes by job index
        self._helpers: list[Conn] = []
        self._pool: ThreadPoolExecutor | None = None

    def capacity(self) -> int:
        """How many jobs the next round may have. Opens the helper connections on first
        call; when the server refuses one (max_connections, a pooler's limit), the sweep
        goes on with the connections it has, and says so."""
        while len(self._helpers) + 1 < self.count:
            try:
                self._helpers.append(connect_like(self.conn, f"worker-{len(self._helpers) + 2}"))
            except psycopg.OperationalError as exc:
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log.warning(
                    "could not open writing connection %d (%s): writing %d batch(es) at a time",
                    len(self._helpers) + 2, first_line, len(self._helpers) + 1,
                )  # fmt: skip
                self.count = len(self._helpers) + 1
        if self._helpers and self._pool is None:
            self._pool = ThreadPoolExecutor(len(self._helpers), thread_name_prefix="runbook-worker")
        return self.count

    def run(self, jobs: list[Job[T]]) -> list[T | Exception]:
        """Run the jobs at once (at most ``capacity()``) and return each one's result or
        the exception it raised, in order.

        Interrupted (a KeyboardInterrupt in this thread): sets ``abort``, cancels the
        statements running on helpers, waits for every job to end and re-raises; the
        outcomes of the jobs that did finish are then in ``finished`` (a job that committed
        before the cancel reached it must still be recorded)."""
        if not 1 <= len(jobs) <= len(self._helpers) + 1:
            raise ValueError(f"{len(jobs)} jobs for {len(self._helpers) + 1} connections: call capacity() first")
        self.finished = {}
        futures: list[Future[T]] = []
        try:
            if self._pool is not None:
                futures = [self._pool.submit(job, c) for job, c in zip(jobs[1:], self._helpers)]
            try:
                self.finished[0] = jobs[0](self.conn)
            except Exception as exc:
                self.finished[0] = exc
            wait(futures)
        except BaseException:
            self.cancel_all()
            wait(futures)
            self._collect(futures)
            raise
        self._collect(futures)
        return [self.finished[i] for i in range(len(jobs))]

    def cancel_all(self, but: Conn | None = None) -> None:
        """Set ``abort`` and cancel the statement running on every helper connection (and
        on the caller's, when called from a helper's job), except ``but``. Writes nothing
        itself: each canceled batch rolls back."""
        self.abort.set()
        others = self._helpers if threading.current_thread() is threading.main_thread() else [self.conn, *self._helpers]
        for c in others:
            if c is but:
                continue
            try:
                c.cancel_safe()
            except Exception:  # a refused cancel must not keep the others running
                pass

    def _collect(self, futures: list[Future[T]]) -> None:
        for i, future in enumerate(futures, start=1):
            if not future.done():
                continue
            error = future.exception()
            if error is None:
                self.finished[i] = future.result()
            elif isinstance(error, Exception):
                self.finished[i] = error
            else:
                raise error

    def lost(self, job: int) -> bool:
        """Whether the connection job ``job`` of the last round ran on was lost."""
        c = self.conn if job == 0 else self._helpers[job - 1]
        return c.broken or c.closed

    def __enter__(self) -> Workers[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the helper connections (the caller's stays open)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for helper in self._helpers:
            helper.close()
        self._helpers.clear()
