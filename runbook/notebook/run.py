"""What the notebooks call: one ``Run`` per executed notebook, a few lines per cell.

``start()`` validates every parameter before it touches the database, connects with
credentials from the environment only, and shows where it is connected. Each step
(``inspect``, ``preview``, ``sweep``) renders its report and returns it; ``finish()``
emits the machine-readable record. A step that fails emits the record with
``outcome: failed`` and the error before re-raising, so a failed run's notebook still
says what happened.
"""

from __future__ import annotations

import html
import re
import os
import sys
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..version import __version__
from . import render
from .charts import show_inspect_charts, show_sweep_chart
from ..db.connect import Database, connect, resolve
from ..errors import ParameterError
from ..ops.index import IndexResult, create_index
from ..ops.inspection import InspectReport, inspect
from ..db.ledger import recent_runs
from ..ops.live import BatchResult, utc_now
from ..rules.params import Options, check_parameters
from ..ops.preview import ROW_HEADERS, PreviewReport, preview
from .progress import progress_reporter
from ..audit.record import RECORD_KEY, check_run_id, code_revision, database_identity, operator
from ..db.transactions import Conn
from ..ops.sweep import FAILED_STOP_REASONS, SweepResult, sweep
from ..rules.target import Target
from ..ops.undo import UndoResult, undo

__all__ = ["Run", "start", "interactive", "NOTEBOOK_NAMES"]

def interactive() -> bool:
    """True in a JupyterLab kernel; False under papermill, nbval or plain Python.

    JupyterLab sets JPY_SESSION_NAME in its kernels' environment, and a command started
    from one (``!python -m runbook run ...``) inherits it: the runner removes it from the
    kernels it starts, so a command-line run is never taken for an interactive one."""
    return bool(os.environ.get("JPY_SESSION_NAME"))


def _display(html_text: str, plain: str) -> None:
    try:
        from IPython.display import display

        display({"text/html": html_text, "text/plain": plain}, raw=True)
    except ImportError:  # plain Python: the text is enough
        print(plain)


@dataclass
class Run:
    """One executed notebook: its id, validated options, connection and outcome."""

    kind: str
    run_id: str
    opts: Options
    target: Target
    database: Database
    conn: Conn
    started_at: str
    params: dict[str, Any]
    outcome: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    of_run_id: str = ""

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            self.outcome.update({"status": "failed", "step": name, "error": f"{type(exc).__name__}: {exc}"})
            self.finish()
            raise

    def controls(self) -> Any:
        """In JupyterLab, the sweep's control panel (settings, Preview, confirm, Execute).

        Headless (papermill, nbval) it builds nothing and returns None, so no cell waits.
        """
        if not interactive():
            return None
        from .panel import sweep_panel

        return sweep_panel(self)

    def create_index(self) -> IndexResult:
        """Show, or with dry_run=False build, the partial index inspect suggests."""
        with self._step("index"):
            result = create_index(self.conn, self.target, dry_run=self.opts.dry_run)
        level = "ok" if result.valid else ("info" if result.dry_run else "warning")
        text = f"{result.note}. Statement: {result.statement}" + (f" ({result.seconds:.1f} s)" if result.created else "")
        _display(render.notice(text, level), text)
        self.outcome["index"] = result.to_dict()
        return result

    def inspect(self) -> InspectReport:
        """Run inspect and render it. Reads only."""
        with self._step("inspect"):
            report = inspect(self.conn, self.target, self.opts)
        show_inspect(report)
        show_inspect_charts(report)
        self.outcome["inspect"] = report.to_dict()
        return report

    def preview(self) -> PreviewReport:
        """Show the next batch and the SQL the sweep will run. Reads only."""
        with self._step("preview"):
            report = preview(self.conn, self.target, self.opts)
        show_preview(report)
        self.outcome["preview"] = report.to_dict()
        return report

    def sweep(self) -> SweepResult:
        """Run the sweep (a dry run unless dry_run=False), reporting progress per batch.

        In JupyterLab a live sweep runs only from the control panel's Execute button, after
        a preview and a confirmation: this cell refuses dry_run=False (ParameterError).
        """
        opts = self.opts
        with self._step("sweep"):
            if interactive() and not opts.dry_run:
                # Refused, not turned into a dry run: a command started from a JupyterLab
                # cell or terminal (plain papermill inherits JPY_SESSION_NAME) must fail
                # loudly rather than exit 0 having written nothing.
                raise ParameterError(
                    "dry_run", False,
                    "True in a JupyterLab cell: the live sweep runs from the panel's Execute button (after Preview and "
                    "confirm), or headless with python -m runbook run sweep -p dry_run False",
                )  # fmt: skip
            result = sweep(
                self.conn, self.target, opts, run_id=self.run_id, parameters=self.params,
                on_batch=progress_reporter(interactive()),
            )  # fmt: skip
        show_sweep(result)
        show_sweep_chart(result)
        self.outcome["sweep"] = result.to_dict()
        if result.stop_reason in FAILED_STOP_REASONS:
            self.outcome["status"] = "failed"
        return result

    def undo(self) -> UndoResult | None:
        """Restore what run ``of_run_id`` changed (a dry run unless dry_run=False).

        Without a run id it changes nothing and lists the recent sweep runs to choose from.
        """
        if not self.of_run_id:
            with self._step("undo"):
                runs = recent_runs(self.conn)
            head = "No run_id given: nothing undone. Recent sweep runs in the ledger (newest first):"
            rows = [(r["run_id"], r["started_at"], r["stop_reason"], r["rows_changed"], r["undone_by"]) for r in runs]
            headers = ["run_id", "started (UTC)", "stopped", "rows changed", "undone by"]
            _display(render.notice(head, "info") + render.table(headers, rows), head + "\n" + render.text_table(headers, rows))
            self.outcome["undo"] = {"status": "nothing_to_do", "recent_runs": [r["run_id"] for r in runs]}
            return None
        with self._step("undo"):
            result = undo(self.conn, self.target, self.opts, of_run_id=self.of_run_id, run_id=self.run_id, parameters=self.params)
        show_undo(result)
        self.outcome["undo"] = result.to_dict()
        if result.stop_reason in FAILED_STOP_REASONS:
            self.outcome["status"] = "failed"
        return result

    def finish(self) -> dict[str, Any]:
        """Emit the run record as one machine-readable output and return it.

        Headless (papermill), also closes the run's connection: nothing runs after the
        record. In JupyterLab it stays open for the control panel.
        """
        self.outcome.setdefault("status", "succeeded")
        record = self.record()
        try:
            from IPython.display import display

            summary = f"run {self.run_id} ({self.kind}): {self.outcome.get('status')}"
            display({"application/json": record, "text/plain": summary}, raw=True, metadata={RECORD_KEY: {"kind": "run_record"}})
        except ImportError:
            pass
        if not interactive():
            # Measured: a connection left open at kernel exit held papermill's kernel
            # shutdown ~2.6 s in 2 of 16 runs; closed first, 0 of 14.
            self.conn.close()
        return record

    def record(self) -> dict[str, Any]:
        """The run record as it stands now (``finish`` emits it). Reads nothing."""
        return {
            "record_version": 1,
            "run_id": self.run_id,
            "notebook": self.kind,
            "started_at": self.started_at,
            "finished_at": utc_now("seconds"),
            # The database roles come from the server (at start), the OS user from the process.
            "operator": {
                **operator(), "session_user": self.identity.get("session_user"), "current_user": self.identity.get("user"),
            },
            "runbook_version": __version__,
            "code_revision": code_revision(),
            "database": {"source": self.database.source, **self.identity},
            "parameters": self.params,
            "options": self.opts.to_dict(),
            "target": self.target.describe(),
            "outcome": self.outcome,
        }


# Names the notebooks themselves assign after start() (JupyterLab may run start() again
# later): skipped only while they hold what the notebook put there, so `-p batch 500`
# is still an unknown parameter.
NOTEBOOK_NAMES = frozenset({"run", "report", "batch", "result", "record"})
# IPython's own history names: _, __, ___, _i, _ii, _iii, _i<n>, _<n>, _ih, _oh, _dh.
_IPYTHON_NAME = re.compile(r"_{1,3}|_i{1,3}|_i?\d+|_ih|_oh|_dh")


def _given(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The variables of a notebook's namespace that are parameters, declared or not:
    everything but IPython's own names, modules (``rb``), dunder names, and the
    notebook's own results (NOTEBOOK_NAMES holding a runbook object)."""
    hidden: set[str] = set()
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and namespace is shell.user_ns:
            hidden = set(shell.user_ns_hidden)
    except ImportError:
        pass
    ours = (Run, InspectReport, PreviewReport, SweepResult, UndoResult, IndexResult, dict, type(None))
    return {
        name: value
        for name, value in namespace.items()
        if name not in hidden and not _IPYTHON_NAME.fullmatch(name)
        and not (name.startswith("__") and name.endswith("__"))
        and not isinstance(value, types.ModuleType)
        and not (name in NOTEBOOK_NAMES and isinstance(value, ours))
    }  # fmt: skip


def start(kind: str, namespace: Mapping[str, Any] | None = None, /, **params: Any) -> Run:
    """Validate parameters, connect, and show where. Nothing is read before validation.

    A notebook calls ``start(kind, globals())``: its parameters are the variables its
    ``parameters`` cell (and papermill's injected cell) defined; any variable that is not a
    declared parameter of that notebook (``runbook.params.PARAMETERS``), a mistyped
    ``-p max_batch 1`` say, stops the run here, before any query. Keyword ``params`` are
    the same parameters given directly. ``run_id`` names this run; for ``undo``,
    ``run_id`` is the sweep run to undo and ``undo_run_id`` names the undo.
    Raises ParameterError (unknown, bad or secret-bearing parameter), DatabaseConfigError.
    """
    given = {**(_given(namespace) if namespace is not None else {}), **params}
    opts, ids = check_parameters(kind, given)
    own, of_run_id = ("undo_run_id", ids["run_id"]) if kind == "undo" else ("run_id", "")
    rid = check_run_id(ids[own])
    database = resolve()
    conn = connect(database, purpose=f"{kind}/{rid}")
    run = Run(
        kind=kind,
        run_id=rid,
        opts=opts,
        target=Target(schema=database.schema),
        database=database,
        conn=conn,
        started_at=utc_now("seconds"),
        params={**given, own: rid},
        of_run_id=of_run_id,
    )
    run.identity = database_identity(conn)
    mode = f"fixed cutoff {opts.cutoff.isoformat()} UTC" if opts.cutoff else f"older than {opts.stale_after_days:g} days"
    lines = [
        f"run {rid} · {kind} · database {database.describe()} · PostgreSQL {run.identity['server_version']}",
        f"target {run.target.schema}.{run.target.table}: {run.target.purpose} rows {mode}, batch size {opts.batch_size:,}",
    ]
    level = "info"
    if kind == "undo":
        lines[1] = f"undo of run {of_run_id or '(none given)'} on {run.target.schema}.{run.target.table}, batch size {opts.batch_size:,}"
    if kind in ("sweep", "undo", "index"):
        lines.append("DRY RUN: nothing will be written" if opts.dry_run else "LIVE: rows will be updated")
        level = "info" if opts.dry_run else "warning"
    _display("".join(render.notice(line, level) for line in lines), "\n".join(lines))
    print("\n".join(lines), file=sys.stderr, flush=True)
    return run


def show_inspect(r: InspectReport) -> None:
    parts = [
        render.table(
            ["what", "value"],
            [
                ("candidates (rows the sweep would mark)", r.candidates),
                ("batches needed at batch size " + f"{r.batch_size:,}", r.batches_needed),
                ("oldest candidate", r.oldest_candidate),
                ("cutoff", r.cutoff_utc),
                ("rows in table", r.total_rows),
                ("one batch scans the whole table", r.full_scan),
            ],
            "Summary",
        ),
        render.table(["status", "rows", "candidates"], [(c.label, c.rows, c.candidates) for c in r.by_status], "By status (all purposes)"),
        render.table(["file_purpose", "rows", "candidates"], [(c.label, c.rows, c.candidates) for c in r.by_purpose], "By purpose"),
        render.table(["age", "rows", "candidates"], [(c.label, c.rows, c.candidates) for c in r.by_age], "By age"),
    ]
    parts += [render.notice(w) for w in r.warnings]
    plain = f"{r.candidates:,} candidates, {r.batches_needed:,} batches, oldest {render.fmt(r.oldest_candidate)}\n" + "\n".join(
        "WARNING: " + w for w in r.warnings
    )
    _display("".join(parts), plain)


def show_preview(p: PreviewReport) -> None:
    rows = [(row.id, row.status, row.created_at, row.purpose) for row in p.rows]  # plain-text log only
    head = (
        f"Next batch: {len(p.rows):,} of {p.candidates:,} candidates, oldest first; cutoff "
        f"{render.fmt(p.cutoff_utc)}; fingerprint {p.fingerprint} (it binds the target, rule, cutoff and these ids). "
        f"To sweep exactly these rows: -p cutoff {p.cutoff_utc.isoformat()}Z -p batch_size {p.batch_size} "
        f"-p expect_fingerprint {p.fingerprint}"
    )
    sql_html = "".join(f"<p><b>{html.escape(k)}</b></p><pre>{html.escape(v)}</pre>" for k, v in p.sql.items())
    body = (
        render.notice(head, "info")
        + render.preview_rows(p, 320)
        + "<details><summary>SQL the sweep will run, and its parameters</summary>"
        + sql_html
        + f"<pre>{html.escape(repr(p.parameters))}</pre></details>"
    )
    plain = head + "\n" + render.text_table(ROW_HEADERS, rows[:20])
    if len(rows) > 20:
        plain += f"\n... {len(rows) - 20:,} more rows"
    _display(body, plain)


def _batch_rows(batches: list[BatchResult]) -> list[tuple[int, int, int, float, str, str]]:
    """One table row per batch: number, rows looked at, rows changed, ms, WAL, commit time."""
    return [
        (b.number, b.selected, b.changed, round(b.seconds * 1000, 1), f"{b.wal_bytes / 1e6:.1f}" if b.wal_bytes else "-", b.committed_at)
        for b in batches
    ]


def show_sweep(s: SweepResult) -> None:
    if s.dry_run:
        head = (
            f"DRY RUN, nothing written: {s.candidates_at_start:,} candidates; a live sweep with these limits would "
            f"change up to {s.would_change:,} rows in {s.would_batches:,} batches."
        )
        _display(render.notice(head, "info"), head)
        return
    durations = sorted(b.seconds for b in s.batches)
    p50 = durations[len(durations) // 2] if durations else 0.0
    head = (
        f"{s.changed:,} rows set to {s.target['new_status']} in {len(s.batches):,} batches, {s.seconds:.2f} s "
        f"(batch p50 {p50 * 1000:.0f} ms). Stopped: {s.stop_reason}."
        + (f" Remaining candidates: {s.remaining:,}." if s.remaining is not None else "")
        + (f" ({s.stop_detail})" if s.stop_detail else "")
        + f" First batch fingerprint {s.first_batch_fingerprint}."
        + f" Ledger: litellm_runbook.changes where run_id = '{s.run_id}'."
    )
    rows = _batch_rows(s.batches)
    level = "ok" if s.stop_reason == "done" else "warning"
    _display(
        render.notice(head, level)
        + '<div style="max-height:320px;overflow:auto">'
        + render.table(["batch", "looked at", "changed", "ms", "WAL MB", "committed (UTC)"], rows)
        + "</div>",
        head + "\n" + render.text_table(["batch", "looked at", "changed", "ms", "WAL MB", "committed"], rows[-20:]),
    )


def undo_summary(u: UndoResult) -> str:
    """One sentence: what undo restored (or would), and what it left alone, by reason."""
    alone = (
        f"left alone: {u.changed_since:,} changed since, {u.later_run:,} changed by a later run, "
        f"{u.already_undone:,} already undone"
    )
    if u.dry_run:
        return (
            f"DRY RUN, nothing written: run {u.of_run_id} changed {u.rows_in_ledger:,} rows; {u.restorable:,} can be "
            f"restored (its change is their latest in the ledger and still in place); {alone}."
        )
    return (
        f"Undo {u.run_id} of run {u.of_run_id}: {u.restored:,} rows restored in {len(u.batches):,} batches; {alone}. "
        f"Stopped: {u.stop_reason}." + "".join(f" Warning: {w}." for w in u.warnings)
    )


def show_undo(u: UndoResult) -> None:
    head = undo_summary(u)
    if u.dry_run:
        _display(render.notice(head, "info"), head)
        return
    rows = _batch_rows(u.batches)
    _display(
        render.notice(head, "ok" if u.stop_reason == "done" else "warning")
        + render.table(["batch", "looked at", "restored", "ms", "WAL MB", "committed (UTC)"], rows),
        head,
    )
