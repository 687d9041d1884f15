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
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import __version__, render
from .connect import Database, connect, resolve
from .errors import ParameterError
from .inspection import InspectReport, inspect
from .params import Options, options, refuse_secrets
from .preview import PreviewReport, preview
from .record import RECORD_KEY, check_run_id, code_revision, database_identity, operator
from .session import Conn
from .sweep import BatchResult, SweepResult, sweep
from .target import Target

__all__ = ["Run", "start", "interactive"]

KINDS = ("inspect", "preview", "sweep")


def interactive() -> bool:
    """True in a JupyterLab kernel; False under papermill, nbval or plain Python."""
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

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            self.outcome.update({"status": "failed", "step": name, "error": f"{type(exc).__name__}: {exc}"})
            self.finish()
            raise

    def inspect(self) -> InspectReport:
        """Run inspect and render it. Reads only."""
        with self._step("inspect"):
            report = inspect(self.conn, self.target, self.opts)
        show_inspect(report)
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
        """Run the sweep (a dry run unless dry_run=False), printing one line per batch."""
        started = time.monotonic()

        def progress(result: SweepResult, batch: BatchResult) -> None:
            done = result.changed
            total = max(result.candidates_at_start, 1)
            rate = done / max(time.monotonic() - started, 1e-6)
            left = max(result.candidates_at_start - done, 0)
            print(
                f"batch {batch.number}: {batch.changed:,} rows in {batch.seconds * 1000:.0f} ms; "
                f"{done:,}/{result.candidates_at_start:,} ({100 * done / total:.0f}%), {rate:,.0f} rows/s, "
                f"~{left / rate if rate else 0:.0f} s left",
                flush=True,
            )

        with self._step("sweep"):
            result = sweep(self.conn, self.target, self.opts, on_batch=progress)
        show_sweep(result)
        self.outcome["sweep"] = result.to_dict()
        return result

    def finish(self) -> dict[str, Any]:
        """Emit the run record as one machine-readable output and return it."""
        self.outcome.setdefault("status", "succeeded")
        record = {
            "record_version": 1,
            "run_id": self.run_id,
            "notebook": self.kind,
            "started_at": self.started_at,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "operator": operator(),
            "runbook_version": __version__,
            "code_revision": code_revision(),
            "database": {"source": self.database.source, **self.identity},
            "parameters": self.params,
            "options": self.opts.to_dict(),
            "target": self.target.describe(),
            "outcome": self.outcome,
        }
        try:
            from IPython.display import display

            summary = f"run {self.run_id} ({self.kind}): {self.outcome.get('status')}"
            display({"application/json": record, "text/plain": summary}, raw=True, metadata={RECORD_KEY: {"kind": "run_record"}})
        except ImportError:
            pass
        return record


def start(kind: str, run_id: str = "", **params: Any) -> Run:
    """Validate parameters, connect, and show where. Nothing is read before validation.

    Raises ParameterError (bad or secret-bearing parameter), DatabaseConfigError.
    """
    if kind not in KINDS:
        raise ParameterError("kind", kind, f"one of {list(KINDS)}")
    refuse_secrets({"run_id": run_id, **params})
    opts = options(**params)
    rid = check_run_id(run_id)
    database = resolve()
    conn = connect(database, purpose=f"{kind}/{rid}")
    run = Run(
        kind=kind,
        run_id=rid,
        opts=opts,
        target=Target(),
        database=database,
        conn=conn,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        params={"run_id": rid, **params},
    )
    run.identity = database_identity(conn)
    mode = f"fixed cutoff {opts.cutoff.isoformat()} UTC" if opts.cutoff else f"older than {opts.stale_after_days:g} days"
    lines = [
        f"run {rid} · {kind} · database {database.describe()} · PostgreSQL {run.identity['server_version']}",
        f"target {run.target.schema}.{run.target.table}: {run.target.purpose} rows {mode}, batch size {opts.batch_size:,}",
    ]
    level = "info"
    if kind == "sweep":
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
    rows = [(row.id, row.status, row.created_at, row.purpose) for row in p.rows]
    head = (
        f"Next batch: {len(p.rows):,} of {p.candidates:,} candidates, oldest first; cutoff "
        f"{render.fmt(p.cutoff_utc)}; fingerprint {p.fingerprint}"
    )
    sql_html = "".join(f"<p><b>{html.escape(k)}</b></p><pre>{html.escape(v)}</pre>" for k, v in p.sql.items())
    body = (
        render.notice(head, "info")
        + '<div style="max-height:320px;overflow:auto">'
        + render.table(["id", "status", "created_at", "purpose"], rows)
        + "</div>"
        + "<details><summary>SQL the sweep will run, and its parameters</summary>"
        + sql_html
        + f"<pre>{html.escape(repr(p.parameters))}</pre></details>"
    )
    plain = head + "\n" + render.text_table(["id", "status", "created_at", "purpose"], rows[:20])
    if len(rows) > 20:
        plain += f"\n... {len(rows) - 20:,} more rows"
    _display(body, plain)


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
    )
    rows = [(b.number, b.selected, b.changed, round(b.seconds * 1000, 1), b.committed_at) for b in s.batches]
    level = "ok" if s.stop_reason == "done" else "warning"
    _display(
        render.notice(head, level)
        + '<div style="max-height:320px;overflow:auto">'
        + render.table(["batch", "looked at", "changed", "ms", "committed (UTC)"], rows)
        + "</div>",
        head + "\n" + render.text_table(["batch", "looked at", "changed", "ms", "committed"], rows[-20:]),
    )
