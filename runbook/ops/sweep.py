"""Sweep: mark, delete or clear stale rows in bounded batches, each batch its own short transaction.

What it writes: the target's action on candidate rows (``status = new_status``; the row
deleted; its payload columns set to ``'{}'``), at most ``batch_size`` per transaction,
oldest first, and for each batch its ledger rows in the same statement
(``runbook.db.ledger``). A delete or clear batch first writes its rows, whole, to an
archive file (``runbook.audit.archive``) and fsyncs it; its ledger row names the file and
its sha256. With ``vacuum=True``, a delete or clear that changed rows ends with
``VACUUM (ANALYZE)`` of the table. With ``dry_run=True`` (the default) it writes nothing
and reports what it would do.

How, top-down (``_Sweep``): a run is up to five *passes*; a pass snapshots the candidates
into a temp table (one scan, ``sql.candidates``; a window of at most ``SNAPSHOT_WINDOW`` at a
time, oldest first) and drains it in *rounds*; a round writes
up to ``workers`` consecutive slices of the snapshot at once, one batch per connection
(``runbook.ops.rounds``); a batch locks its rows by primary key with SKIP LOCKED and
re-checks the whole predicate at update time, so a concurrent completion always wins.
Each round is sized from the WAL and time the last one measured (``rules.pacing``). When
a snapshot is used up, one count over the real table decides: nothing left (``done``),
or another pass over what is left (rows that were locked, or became candidates, meanwhile).
A pass that changed nothing (what is left is held by other sessions) is followed by a wait
of 1, then 2, then 4 s before the next; after the fifth pass the run ends ``remaining_locked``.

Before the first write: the server must be writable, the role must hold UPDATE, the
ledger must be writable, the target's advisory lock must be free, the candidates must
not exceed ``max_rows`` and, if given, the first batch must match ``expect_fingerprint``.

Stops only between rounds (``runbook.ops.stops``): ``max_batches``, ``max_seconds``, the
stop file appearing, a kernel interrupt (the first SIGINT lets the batches in flight
commit; a second one aborts them, rolled back), or ``should_stop()``. A batch that hits
lock_timeout or statement_timeout rolls back and is retried smaller after a pause,
``max_retries`` times. Every step returns the ``Stop`` it ended with; ``end_run`` records it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from .. import logs
from ..audit.record import new_run_id
from ..db import control
from ..db.health import HealthLimits, blind_signals, refuse_blind
from ..audit.archive import archive_root
from ..db.transactions import Conn, check_target, read_only, resolve_cutoff, table_columns
from ..db.workers import Workers
from ..errors import PreviewMismatchError, TooManyCandidatesError
from ..rules.pacing import next_batch_size
from ..rules.params import Options
from ..rules.states import Kind, StopReason
from ..rules.target import Target
from ..sql import candidates, catalog, maintenance
from .live import BatchResult, LiveRun, MetricsFile, check_writable, end_run, live_run, set_batch_settings
from .inspection import finds_by_full_scan, index_suggestion
from .preview import fingerprint
from .rounds import Archiving, Keys, Round, run_round, with_retries
from .stops import Stop, wait_until_healthy

__all__ = ["BatchResult", "SweepResult", "sweep"]

log = logs.get(__name__)

_MAX_PASSES = 5
# A pass snapshots at most this many candidates at a time (a window, oldest first), so its
# temp table and sort stay bounded however large the backlog: 500,000 (time, key) pairs take
# ~40 MB of temp table and ~50 MB of sort memory. Each further window is one more scan of the
# table (an index range scan with an index on the time column).
SNAPSHOT_WINDOW = 500_000
# After a pass that changed nothing (what is left is held by other sessions: LiteLLM's poller
# claims the oldest responses FOR UPDATE), the next pass waits this long, doubling each time:
# 1, 2, 4 s, then the run ends remaining_locked. A poller's claim lasts well under a second.
_HELD_WAIT_S = 1.0
SNAPSHOT_WORK_MEM = "96MB"
_START: tuple[Any, str] = (datetime.min, "")  # a keyset before every snapshot entry
OnBatch = Callable[["SweepResult", BatchResult], None]


@dataclass
class SweepResult:
    """The outcome of one sweep; ``to_dict()`` is the machine-readable record."""

    target: dict[str, Any]
    options: dict[str, Any]
    cutoff_utc: datetime
    dry_run: bool
    candidates_at_start: int
    run_id: str | None = None
    changed: int = 0
    batches: list[BatchResult] = field(default_factory=list)
    stop_reason: str = ""
    stop_detail: str = ""
    seconds: float = 0.0
    remaining: int | None = None  # counted at the end when cheap to know, else None
    would_change: int = 0  # dry run: rows the real sweep would change, at most
    would_batches: int = 0
    first_batch_fingerprint: str = ""
    retries: list[str] = field(default_factory=list)
    pauses: list[dict[str, Any]] = field(default_factory=list)
    metrics_file: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. a metrics file that could not be written
    health_blind: list[str] = field(default_factory=list)  # health signals the role cannot see
    # What the run saw of the foreground between rounds (lock waiters, replication lag, its
    # own lock timeouts) and how long the rate budget held it back (ops.stops.note_signals).
    signals: dict[str, Any] = field(default_factory=dict)
    action: str = "mark"  # what the sweep does to a candidate: mark, delete or clear
    archive_dir: str | None = None  # delete and clear: the archive folder; None when archive=False or marking
    dead_tuples: int | None = None  # delete and clear: the table's dead tuples after the sweep (statistics)
    vacuum: dict[str, Any] | None = None  # what vacuum=True did: seconds, dead tuples after, or its error

    @property
    def rows_changed(self) -> int:
        return self.changed

    def keep_batches(self, kept: list[BatchResult]) -> None:
        """Keep only ``kept`` (the batches the ledger holds, after a lost connection)."""
        self.batches = kept
        self.changed = sum(b.changed for b in kept)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cutoff_utc"] = self.cutoff_utc.isoformat() + "Z"
        return out


def sweep(
    conn: Conn,
    target: Target,
    opts: Options,
    *,
    run_id: str | None = None,
    parameters: dict[str, Any] | None = None,
    on_batch: OnBatch | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SweepResult:
    """Run the bounded sweep (or its dry run) and return what happened.

    Raises, before any write: TargetNotFoundError, BlindHealthError (a health signal the role
    cannot see, unless ``allow_blind_health``), ReadOnlyError, PoolerError,
    LedgerUnavailableError, SweepInProgressError, TooManyCandidatesError,
    PreviewMismatchError. A statement canceled by request (``pg_cancel_backend()``) stops
    the sweep at once: ``cancelled``, with what was canceled in ``stop_detail``. A batch that fails
    otherwise raises its psycopg error (ConnectionLostError when the server went away);
    that batch rolled back; every batch that committed (earlier ones, and its round
    partner when that one succeeded) stays, with its ledger and in the result, and the
    run's ledger row records the failure when the connection still works.
    """
    started = time.monotonic()
    check_target(conn, target)
    with read_only(conn):
        cutoff = resolve_cutoff(conn, opts.stale_after_days, opts.cutoff)
    params: dict[str, Any] = {**target.predicate_params(), "cutoff": cutoff, "new_status": target.new_status}
    if not opts.dry_run:
        check_writable(conn, target)  # may it write at all: said before what it cannot see
    blind = _blind_health(conn, opts)
    if opts.dry_run:
        return _dry_run(conn, target, opts, params, cutoff, blind, started)

    rid = run_id or new_run_id()
    archiving = _archiving(conn, target, opts)
    result = SweepResult(
        target=target.describe(), options=opts.to_dict(), cutoff_utc=cutoff, dry_run=False,
        candidates_at_start=0, run_id=rid, health_blind=blind, action=target.action,
        archive_dir=str(archiving.root) if archiving and archiving.root else None,
    )  # fmt: skip
    metrics = MetricsFile(opts, rid, Kind.SWEEP, target, started)
    parameters = parameters or opts.to_dict()
    with live_run(conn, target, opts, kind=Kind.SWEEP, run_id=rid, parameters=parameters, should_stop=should_stop) as run:
        try:
            with Workers[Any](conn, opts.workers) as pool:
                stop = _Sweep(conn, pool, target, opts, params, result, run, metrics, on_batch, archiving).run()
        except BaseException as exc:  # a refusal, an error between rounds, a second Ctrl-C
            stop = Stop.of_error(exc, "a statement of the sweep")
        error = end_run(conn, target, run, result, stop, metrics, started, remaining=result.remaining)
    if error is not None:
        raise error
    if not target.marks:
        _after_removal(conn, target, opts, result)
    return result


def _archiving(conn: Conn, target: Target, opts: Options) -> Archiving | None:
    """How this run's batches archive (None for a mark target)."""
    if target.marks:
        return None
    json_columns = tuple(name for name, type_, _ in table_columns(conn, target) if type_ in ("json", "jsonb"))
    if not opts.archive:
        log.warning(f"archive=False: {target.table} rows are {target.verb} without an archive; undo cannot restore them")
    return Archiving(archive_root(opts.archive_dir) if opts.archive else None, json_columns)


def _after_removal(conn: Conn, target: Target, opts: Options, result: SweepResult) -> None:
    """Read the dead tuples the sweep left (the statistics', which lag by up to a second or
    so) and, with ``vacuum`` and rows changed, VACUUM (ANALYZE) the table (its own statement,
    outside any transaction). A VACUUM that fails (not the table's owner) is a warning in
    the result, never the run's failure."""

    def dead() -> int | None:
        with read_only(conn):
            row = conn.execute(catalog.table_stats(), {"schema": target.schema, "table": target.table}).fetchone()
        return int(row[2]) if row else None

    result.dead_tuples = dead()
    if opts.vacuum and result.changed:
        with read_only(conn):
            owner = conn.execute(catalog.owns_table(), {"schema": target.schema, "table": target.table}).fetchone()
        if not (owner and owner[0]):
            result.vacuum = {"error": "this role does not own the table, and VACUUM skips a table it may not vacuum"}
            result.warnings.append(f"vacuum=True: not run on {target.table}: {result.vacuum['error']}; ask its owner")
            return
        t0 = time.monotonic()
        try:
            conn.execute(maintenance.vacuum_analyze(target))
            result.vacuum = {"seconds": round(time.monotonic() - t0, 3), "dead_tuples_after": dead()}
        except psycopg.Error as exc:
            result.vacuum = {"error": f"{type(exc).__name__}: {exc.diag.message_primary}"}
            result.warnings.append(f"the vacuum of {target.table} asked for (vacuum=True) failed: {result.vacuum['error']}")


def _blind_health(conn: Conn, opts: Options) -> list[str]:
    """The health signals this role cannot see, as one line (empty: sees them all).
    BlindHealthError for a live run unless ``allow_blind_health``."""
    limits = HealthLimits(opts.max_replication_lag_bytes, opts.max_lock_waiters, opts.pause_during_vacuum)
    role, blind = blind_signals(conn, limits)
    if not blind:
        return []
    line = refuse_blind(role, blind, live=not opts.dry_run, allow=opts.allow_blind_health)
    log.warning(line)
    return [line]


def _dry_run(
    conn: Conn, target: Target, opts: Options, params: dict[str, Any], cutoff: datetime, blind: list[str], started: float
) -> SweepResult:
    """Count the candidates (read-only) and say what a live sweep would do; writes nothing."""
    with read_only(conn):
        row = conn.execute(candidates.candidate_count(target), params).fetchone()
    count = int(row[0]) if row else 0
    if count > opts.max_rows:
        raise TooManyCandidatesError(f"{count:,} candidates exceed max_rows={opts.max_rows:,}: a live sweep would refuse to start")
    return SweepResult(
        target=target.describe(), options=opts.to_dict(), cutoff_utc=cutoff, dry_run=True,
        candidates_at_start=count, stop_reason=StopReason.DRY_RUN, seconds=time.monotonic() - started, remaining=count,
        would_change=min(count, opts.batch_size * opts.max_batches),
        would_batches=min(math.ceil(count / opts.batch_size), opts.max_batches), health_blind=blind,
    )  # fmt: skip


class _Sweep:
    """One live sweep, read top-down: ``run`` -> passes (``_pass``) -> rounds (``_drain``)
    -> batches (``rounds.run_round``). Each returns the ``Stop`` it ended with, or None
    to go on; only ``_keep`` adds to the result, what a round committed."""

    def __init__(
        self, conn: Conn, pool: Workers[Any], target: Target, opts: Options, params: dict[str, Any],
        result: SweepResult, run: LiveRun, metrics: MetricsFile, on_batch: OnBatch | None, archiving: Archiving | None,
    ) -> None:  # fmt: skip
        self.conn, self.pool, self.target, self.opts, self.params = conn, pool, target, opts, params
        self.result, self.run_, self.metrics, self.on_batch = result, run, metrics, on_batch
        self.archiving = archiving
        self.idle_passes = 0  # passes in a row that changed nothing
        self.next_batch = run.first_batch
        self.first_round = time.monotonic()
        row = conn.execute(catalog.run_start()).fetchone()
        self.began: datetime = row[0] if row else datetime.min
        # Two writers fill the WAL buffers twice as fast: each round gets 1/workers of them
        # (measured: with the whole buffers, p99 119-166 ms; with half, 55-94 ms; bench/RESULTS.md).
        self.wal_budget = opts.max_batch_wal_bytes or (int(row[1]) // opts.workers if row else 0)

    def run(self) -> Stop:
        for pass_number in range(_MAX_PASSES):
            stop = self._pass(first=pass_number == 0)
            if stop is not None:
                return stop
            if self.idle_passes and pass_number + 1 < _MAX_PASSES:
                reason = self._wait_for_holders(_HELD_WAIT_S * 2 ** (self.idle_passes - 1))
                if reason:
                    return self.run_.stopper.stop(reason)
        return Stop(StopReason.REMAINING_LOCKED)

    def _wait_for_holders(self, seconds: float) -> StopReason | None:
        """Wait ``seconds`` before another pass, since the last one found every row it
        looked at held by another session (LiteLLM's poller holds the oldest responses
        while it claims them); the wait goes into ``signals``. A stop ends it within half a second."""
        log.info(f"{self.result.remaining:,} candidates are held by other sessions: another pass in {seconds:g} s")
        return self._wait(seconds, "held_rows_waits_seconds")

    def _wait(self, seconds: float, key: str) -> StopReason | None:
        """Sleep up to ``seconds`` in steps of at most half a second, ending early at any stop
        (stop file, a request, max_seconds, an interrupt); add the time waited to ``signals[key]``.
        Returns the stop's reason, or None after the whole wait."""
        until, reason = time.monotonic() + seconds, None
        while (left := until - time.monotonic()) > 0:
            if reason := self.run_.stopper.reason(len(self.result.batches)):
                break
            time.sleep(min(left, 0.5))
        waited = seconds - max(left, 0.0)
        self.result.signals[key] = round(self.result.signals.get(key, 0.0) + waited, 3)
        return reason

    def _pass(self, first: bool) -> Stop | None:
        """Snapshot the candidates window by window (oldest first) and write them all; None
        when another pass is worth it."""
        after, changed, seen, window = _START, 0, 0, 0
        last = None
        while True:
            # A snapshot is a full scan: after one statement timeout it is tried once more, no more.
            snap = with_retries(lambda _: self._snapshot(after), self.opts, "snapshot", max_timeouts=1)
            self.result.retries += snap.notes
            if snap.value is None:
                assert snap.stop is not None
                return snap.stop
            in_window = snap.value
            if first and window == 0:
                self._check_first_pass(in_window)
            if in_window == 0 and seen == 0:
                # Nothing to write: no reason to wait for the database to be healthy.
                self.result.remaining = 0
                return Stop(StopReason.DONE)
            if in_window:
                last = self.conn.execute(candidates.snapshot_last()).fetchone()
                done, stop = self._drain()
                changed, seen = changed + done, seen + in_window
                if stop is not None:
                    return stop
            if in_window < SNAPSHOT_WINDOW or last is None:
                break
            after, window = (last[0], str(last[1])), window + 1
        if changed == seen:
            # Every candidate of the snapshot was changed. A row can only become a
            # candidate later by getting an older created_at or leaving a terminal status,
            # which LiteLLM never does; so skip the second full scan of the table.
            self.result.remaining = 0
            return Stop(StopReason.DONE)
        with read_only(self.conn):
            row = self.conn.execute(candidates.candidate_count(self.target), self.params).fetchone()
        self.result.remaining = int(row[0]) if row else 0
        if self.result.remaining == 0:
            return Stop(StopReason.DONE)
        # A pass that changed nothing found what is left locked by other sessions (or
        # changing under it): wait before the next one rather than spin (``run``); after
        # the last pass, a later run picks it up.
        self.idle_passes = self.idle_passes + 1 if changed == 0 else 0
        return None

    def _drain(self) -> tuple[int, Stop | None]:
        """Write the snapshot in rounds, oldest first; return the rows changed, and the stop
        when one came before the snapshot was used up."""
        self._publish()
        changed, after, planned = 0, _START, self.opts.batch_size
        while True:
            reason = self.run_.stopper.reason(len(self.result.batches)) or wait_until_healthy(
                self.conn, self.target, self.opts, self.run_.stopper, self.result, self.next_batch, self.began
            )
            if reason:
                return changed, self.run_.stopper.stop(reason)
            chunks = self._next_chunks(after, planned)
            if not chunks:
                return changed, None
            done = run_round(
                self.pool, chunks, target=self.target, opts=self.opts, params=self.params, run_id=str(self.result.run_id),
                archiving=self.archiving,
            )
            self.next_batch += len(chunks)
            self._keep(done)
            changed += sum(batch.changed for batch, _ in done.committed)
            if done.stop is not None:
                return changed, done.stop
            # The last slice may have been retried smaller: go on right after what it took.
            # (A smaller retry of an earlier slice leaves the rest of it to the next pass.)
            last = done.committed[-1][1][-1]
            after = (last[0], str(last[1]))
            planned = min(
                next_batch_size(self.opts, planned, b.selected, b.seconds, b.wal_bytes, self.wal_budget, b.archive_bytes)
                for b, _ in done.committed
            )
            self._publish()
            if self.opts.pause_s:
                time.sleep(self.opts.pause_s)
            self._keep_to_budget()

    def _next_chunks(self, after: tuple[Any, str], size: int) -> list[tuple[int, Keys]]:
        """The next round: up to ``workers`` consecutive slices of the snapshot after ``after``,
        numbered from the next batch, within ``max_batches``."""
        chunks: list[tuple[int, Keys]] = []
        for _ in range(min(self.pool.capacity(), self.opts.max_batches - len(self.result.batches))):
            keys = self._next_keys(after, size)
            if not keys:
                break
            chunks.append((self.next_batch + len(chunks), keys))
            after = (keys[-1][0], str(keys[-1][1]))
        return chunks

    def _keep(self, done: Round) -> None:
        """Add what a round committed to the result, then tell ``on_batch`` (not after an
        interrupt: the operator asked to stop)."""
        self.result.retries += done.notes
        waits = sum("LockNotAvailable" in note for note in done.notes)  # its own batches' lock timeouts
        self.result.signals["own_lock_timeouts"] = self.result.signals.get("own_lock_timeouts", 0) + waits
        for batch, _ in done.committed:
            self.result.batches.append(batch)
            self.result.changed += batch.changed
        if self.on_batch is not None and not (done.stop is not None and done.stop.reason is StopReason.INTERRUPTED):
            for batch, _ in done.committed:
                self.on_batch(self.result, batch)

    def _keep_to_budget(self) -> None:
        """With ``max_rows_per_second``, wait until the rows changed so far fit the budget since
        the first round began (its own batches' time counts towards it); the wait goes into
        ``signals``. Any stop (stop file, a request, max_seconds, an interrupt) ends the wait
        within half a second; the next round's check then stops the run."""
        rate = self.opts.max_rows_per_second
        if not rate:
            return
        self._wait(max(self.first_round + self.result.changed / rate - time.monotonic(), 0.0), "budget_waits_seconds")

    def _publish(self) -> None:
        remaining = max(self.result.candidates_at_start - self.result.changed, 0)
        self.metrics.publish(self.result, "running", remaining=remaining)

    def _snapshot(self, after: tuple[Any, str]) -> int:
        """Copy the next window of candidates' keys (after ``after``) into the session's temp
        table; return how many (at most ``SNAPSHOT_WINDOW``)."""
        with self.conn.transaction():
            # One full scan of the table: allow it ten batches' worth of statement time.
            set_batch_settings(self.conn, self.opts, factor=10)
            stmts = candidates.snapshot(self.target)
            params = {**self.params, "after_t": after[0], "after_k": after[1], "window": SNAPSHOT_WINDOW,
                      "work_mem": SNAPSHOT_WORK_MEM}  # fmt: skip
            count = 0
            for stmt in stmts:
                cur = self.conn.execute(stmt, params)
                if stmt is stmts[2]:
                    count = cur.rowcount
        return count

    def _warn_of_scans(self, candidates_count: int) -> None:
        """A backlog of several windows without an index to find them costs a full scan of
        the table per window: say so in the result (and the log) before the first write."""
        windows = math.ceil(candidates_count / SNAPSHOT_WINDOW)
        if windows < 2:
            return
        with read_only(self.conn):
            scans = finds_by_full_scan(self.conn, self.target, {**self.params, "batch_size": self.opts.batch_size})
            if not scans:
                return
            suggestion = index_suggestion(self.target, self.conn)
        note = (
            f"{candidates_count:,} candidates are {windows} windows of {SNAPSHOT_WINDOW:,} and no index finds them: "
            f"this sweep reads the whole of {self.target.table} once per window ({windows} full scans). "
            f"05_create_index builds the index that makes each window an index range scan: {suggestion}"
        )
        log.warning(f"warning: {note}")
        self.result.warnings.append(note)

    def _next_keys(self, after: tuple[Any, str], size: int) -> Keys:
        """The next ``size`` snapshot entries (time, key) after ``after``; none: pass done.
        Reads the session's temp table, so only on the connection that made the snapshot."""
        return self.conn.execute(
            candidates.snapshot_next(), {"after_t": after[0], "after_k": after[1], "batch_size": size}
        ).fetchall()

    def _check_first_pass(self, in_snapshot: int) -> None:
        """Refuse, before any write, too many candidates or a first batch unlike the approved one."""
        opts, result = self.opts, self.result
        if in_snapshot >= SNAPSHOT_WINDOW:
            # A full window: the backlog may be larger, and max_rows and progress need all of it.
            with read_only(self.conn):
                row = self.conn.execute(candidates.candidate_count(self.target), self.params).fetchone()
            in_snapshot = max(in_snapshot, int(row[0]) if row else 0)
        result.candidates_at_start = in_snapshot
        control.note_candidates(self.conn, str(result.run_id), in_snapshot)
        self._warn_of_scans(in_snapshot)
        if in_snapshot > opts.max_rows:
            raise TooManyCandidatesError(
                f"{in_snapshot:,} candidates exceed max_rows={opts.max_rows:,}: refused before the first batch, "
                "nothing written. Check inspect, then raise max_rows if this is expected."
            )
        # The first batch as a preview shows it (same order, same size): its fingerprint goes
        # into the record and is checked against an approved one.
        first = self._next_keys(_START, opts.batch_size)
        result.first_batch_fingerprint = fingerprint(result.target, result.cutoff_utc, [str(r[1]) for r in first])
        if opts.expect_fingerprint and result.first_batch_fingerprint != opts.expect_fingerprint:
            raise PreviewMismatchError(
                f"the first batch now has fingerprint {result.first_batch_fingerprint}, not the approved "
                f"{opts.expect_fingerprint}: the fingerprint binds the target, the rule, the cutoff "
                f"({result.cutoff_utc.isoformat()}Z here) and the batch's ids, so the preview's cutoff, batch_size or rows "
                "differ (give the preview's cutoff as cutoff). Nothing written; preview again."
            )
