"""Every report as the notebooks and logs show it: HTML with a plain-text twin, and the
progress texts. Pure functions, except ``display`` (and the ``show_*`` that call it),
which puts one rendering into the cell's output.

A rendering is a ``Shown``: ``html`` for JupyterLab and the executed notebook,
``plain`` for ``text/plain`` (nbval, a terminal, the log). Charts are in ``charts``.
"""

from __future__ import annotations

import html as _html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol, cast

from .. import logs
from ..audit.record import RECORD_KEY
from ..ops.index import IndexResult
from ..ops.inspection import InspectReport
from ..ops.preview import PreviewReport
from ..ops.sweep import BatchResult, SweepResult
from ..ops.undo import UndoResult
from ..rules.params import Options
from ..rules.states import StopReason

__all__ = [
    "Shown", "display", "fmt", "table", "notice", "text_table", "preview_rows", "plural",
    "started", "index_result", "inspect_report", "preview_report", "sweep_result", "undo_result", "undo_summary",
    "recent_runs", "show_inspect", "show_preview", "show_sweep", "show_undo", "show_record",
    "panel_preview", "panel_result", "ProgressFigures", "progress_line", "signals_text", "progress_label", "progress_final",
    "BATCH_HEADERS", "MOST_BATCH_ROWS",
]  # fmt: skip

log = logs.get(__name__)


class Shown(NamedTuple):
    """One output: HTML, and the same as plain text."""

    html: str
    plain: str


def display(shown: Shown) -> None:
    """Put ``shown`` into the cell's output (``text/html`` and ``text/plain``); in plain
    Python, without IPython, log its text instead."""
    try:
        from IPython.display import display as ipython_display
    except ImportError:  # plain Python: the text is enough
        log.info(shown.plain)
        return
    # IPython's display() carries no annotations.
    cast(Callable[..., None], ipython_display)({"text/html": shown.html, "text/plain": shown.plain}, raw=True)


# -- pieces ------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A human-readable cell: thousands separators, UTC timestamps, NULL for None."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="milliseconds") + " UTC"
    return str(value)


def plural(count: int, word: str) -> str:
    """``1 batch``, ``3 batches``, ``1,000 rows``: a count with its noun."""
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}{'es' if word.endswith(('s', 'ch')) else 's'}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    """An HTML table; numbers right-aligned."""
    head = "".join(f"<th>{_html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for value in row:
            align = "right" if isinstance(value, (int, float)) and not isinstance(value, bool) else "left"
            cells.append(f'<td style="text-align:{align}">{_html.escape(fmt(value))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption style='text-align:left'><b>{_html.escape(caption)}</b></caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def text_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The same table as plain text, for logs and text/plain outputs."""
    cells = [list(headers)] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def notice(text: str, level: str = "warning") -> str:
    colour = {"warning": "#fff3cd", "error": "#f8d7da", "info": "#e7f1ff", "ok": "#d1e7dd"}[level]
    return f'<div style="background:{colour};padding:6px 10px;margin:4px 0;border-radius:4px">{_html.escape(text)}</div>'


def preview_rows(report: PreviewReport, max_height_px: int) -> str:
    """A preview's rows as a scrollable HTML table, for the notebook and the panel alike."""
    # Left-aligned like a cell's output table (JupyterLab's widget styles centre tables).
    html_table = table(list(report.headers), report.cells()).replace("<table>", '<table style="margin-left:0">', 1)
    return f'<div class="runbook-preview-rows" style="max-height:{max_height_px}px;overflow:auto">{html_table}</div>'


def _level(stop_reason: str) -> str:
    return "ok" if stop_reason == StopReason.DONE else "warning"


# -- the notebooks' reports -------------------------------------------------------------


def started(lines: Sequence[str], live: bool, real_database: bool = False) -> Shown:
    """What ``start()`` shows: one line each for the run, the target, (sweep, undo, index)
    whether it writes, and which database; a live run's lines are a warning, and the
    database line of anything but the demo stands out in red."""
    body = "".join(notice(line, "warning" if live else "info") for line in lines[:-1])
    body += notice(lines[-1], "error" if real_database else "ok") if lines else ""
    return Shown(body, "\n".join(lines))


def index_result(result: IndexResult) -> Shown:
    """What ``create_index`` did or would do, and the statement."""
    level = "ok" if result.valid else ("info" if result.dry_run else "warning")
    text = f"{result.note}. Statement: {result.statement}" + (f" ({result.seconds:.1f} s)" if result.created else "")
    return Shown(notice(text, level), text)


def inspect_report(r: InspectReport) -> Shown:
    """Summary, the counts by status, purpose and age, and inspect's warnings."""
    verb = {"mark": "mark", "delete": "delete", "clear": "clear"}[r.action]
    litellm: Any = r.litellm_hours if r.litellm_cleans else "never: LiteLLM does not clean this"
    parts = [
        table(
            ["what", "value"],
            [
                (f"candidates (rows the sweep would {verb})", r.candidates),
                ("batches needed at batch size " + f"{r.batch_size:,}", r.batches_needed),
                ("oldest candidate", r.oldest_candidate),
                ("cutoff", r.cutoff_utc),
                ("rows in table", r.total_rows),
                ("table size (heap, MiB)", round(r.table_bytes / 2**20, 1)),
                ("TOAST size (MiB)", round(r.toast_bytes / 2**20, 1)),
                ("dead tuples", r.dead_tuples),
                ("last (auto)vacuum", r.last_vacuum),
                ("one batch scans the whole table", r.full_scan),
                ("WAL the sweep writes (estimate, MiB)", round(r.estimated_wal_bytes / 2**20, 1)),
                *([("space it frees for reuse after VACUUM (estimate, MiB)", round(r.frees_bytes / 2**20, 1))] if r.action != "mark" else []),
                ("LiteLLM's own job to drain them, at its defaults (hours)", litellm),
                ("this runbook's sweep, at the rate measured here (seconds)", r.sweep_seconds),
            ],
            "Summary",
        ),
        table(["age", "rows", "candidates"], [(c.label, c.rows, c.candidates) for c in r.by_age], "By age"),
    ]
    if r.action == "mark":  # an age rule has no status or purpose to break down by
        parts[1:1] = [
            table(["status", "rows", "candidates"], [(c.label, c.rows, c.candidates) for c in r.by_status], "By status (all purposes)"),
            table(["file_purpose", "rows", "candidates"], [(c.label, c.rows, c.candidates) for c in r.by_purpose], "By purpose"),
        ]
    parts += [notice(w) for w in r.warnings]
    plain = f"{r.candidates:,} candidates, {r.batches_needed:,} batches, oldest {fmt(r.oldest_candidate)}\n" + "\n".join(
        "WARNING: " + w for w in r.warnings
    )
    return Shown("".join(parts), plain)


def preview_report(p: PreviewReport) -> Shown:
    """The next batch's rows, its fingerprint ready to pass back, and the SQL the sweep runs."""
    rows = p.cells()  # plain-text log only
    head = (
        f"Next batch: {len(p.rows):,} of {p.candidates:,} candidates, oldest first; cutoff "
        f"{fmt(p.cutoff_utc)}; fingerprint {p.fingerprint} (it binds the target, rule, cutoff and these ids). "
        f"To sweep exactly these rows: -p cutoff {p.cutoff_utc.isoformat()}Z -p batch_size {p.batch_size} "
        f"-p expect_fingerprint {p.fingerprint}"
    )
    if p.action != "mark":
        size = "unknown (this role may not read whole rows)" if p.archive_bytes is None else f"{p.archive_bytes / 1024:,.1f} KiB of JSON before compression"
        head += f". Each row is archived whole before it is {p.action}d: this batch's archive is {size}"
    sql_html = "".join(f"<p><b>{_html.escape(k)}</b></p><pre>{_html.escape(v)}</pre>" for k, v in p.sql.items())
    body = (
        notice(head, "info")
        + preview_rows(p, 320)
        + "<details><summary>SQL the sweep will run, and its parameters</summary>"
        + sql_html
        + f"<pre>{_html.escape(repr(p.parameters))}</pre></details>"
    )
    plain = head + "\n" + text_table(p.headers, rows[:20])
    if len(rows) > 20:
        plain += f"\n... {len(rows) - 20:,} more rows"
    return Shown(body, plain)


BATCH_HEADERS = ("batch", "looked at", "changed", "ms", "WAL MB", "committed (UTC)")


def _batch_rows(batches: list[BatchResult]) -> list[tuple[int, int, int, float, str, str]]:
    """One table row per batch, as BATCH_HEADERS: number, rows looked at, rows changed,
    ms, WAL, commit time."""
    return [
        (b.number, b.selected, b.changed, round(b.seconds * 1000, 1), f"{b.wal_bytes / 1e6:.1f}" if b.wal_bytes else "-", b.committed_at)
        for b in batches
    ]


def _verb(s: SweepResult) -> str:
    return {"mark": f"set to {s.target.get('new_status')}", "delete": "deleted", "clear": "cleared"}[s.action]


def _ledger_hint(s: SweepResult) -> str:
    """Where the run's account is: the ledger's changes (mark), or its batches with the
    archive files, the dead tuples left and the vacuum (delete, clear)."""
    if s.action == "mark":
        return f" Ledger: litellm_runbook.changes where run_id = '{s.run_id}'."
    where = f"archive under {s.archive_dir}/{s.run_id}" if s.archive_dir else "NO archive (archive=False): undo cannot restore"
    text = f" Ledger: litellm_runbook.batches where run_id = '{s.run_id}' (each batch's archive file and sha256); {where}."
    if s.dead_tuples is not None:
        text += f" Dead tuples it left in the table: {s.dead_tuples:,}"
        if s.vacuum and "seconds" in s.vacuum:
            text += f"; after VACUUM (ANALYZE) ({s.vacuum['seconds']:.1f} s): {s.vacuum['dead_tuples_after'] or 0:,}."
        else:
            text += "; a vacuum of the table makes their space reusable: rerun with vacuum=True, or let autovacuum do it."
    return text


def sweep_result(s: SweepResult) -> Shown:
    """A dry run's estimate, or a live sweep's rows, batches, stop reason and its batches' table."""
    if s.dry_run:
        head = (
            f"DRY RUN, nothing written: {s.candidates_at_start:,} candidates; a live sweep with these limits would "
            f"change up to {s.would_change:,} rows in {s.would_batches:,} batches."
        )
        return Shown(notice(head, "info"), head)
    durations = sorted(b.seconds for b in s.batches)
    p50 = durations[len(durations) // 2] if durations else 0.0
    head = (
        f"{s.changed:,} rows {_verb(s)} in {len(s.batches):,} batches, {s.seconds:.2f} s "
        f"(batch p50 {p50 * 1000:.0f} ms). Stopped: {s.stop_reason}."
        + (f" Remaining candidates: {s.remaining:,}." if s.remaining is not None else "")
        + (f" ({s.stop_detail})" if s.stop_detail else "")
        + f" Foreground: {s.signals.get('health_checks', 0)} health checks"
        + (signals_text(s.signals, s.pauses) or "; no lock waiters, no lag, no pause")
        + "."
        + f" First batch fingerprint {s.first_batch_fingerprint}."
        + _ledger_hint(s)
    )
    text_headers = [*BATCH_HEADERS[:-1], "committed"]
    return Shown(
        notice(head, _level(s.stop_reason))
        + '<div style="max-height:320px;overflow:auto">'
        + _batches_table(BATCH_HEADERS, s.batches)
        + "</div>",
        head + "\n" + text_table(text_headers, _batch_rows(s.batches[-20:])),
    )


# A 10M-row sweep can take 25,000 batches: a row each would put ~7 MB of HTML into the
# executed notebook (and into papermill's memory). The first and last ones tell the story.
MOST_BATCH_ROWS = 200


def _batches_table(headers: Sequence[str], batches: list[BatchResult]) -> str:
    """The batches' table: every batch up to MOST_BATCH_ROWS, else the first and the last
    half of that many and a line saying how many are left out and where they all are."""
    if len(batches) <= MOST_BATCH_ROWS:
        return table(headers, _batch_rows(batches))
    half = MOST_BATCH_ROWS // 2
    return table(headers, _batch_rows(batches[:half] + batches[-half:])) + (
        f"<p>The {len(batches) - MOST_BATCH_ROWS:,} batches between batch {batches[half - 1].number:,} and batch "
        f"{batches[-half].number:,} are not shown; the run's record (JSON) and litellm_runbook.batches hold every one.</p>"
    )


def undo_summary(u: UndoResult) -> str:
    """One sentence: what undo restored (or would), and what it left alone, by reason."""
    alone = (
        f"left alone: {u.changed_since:,} changed since, {u.later_run:,} changed by a later run, "
        f"{u.already_undone:,} already undone"
    )
    if u.action == "delete":
        alone = f"left alone: {u.changed_since:,} whose key exists again"
    elif u.action == "clear":
        alone = f"left alone: {u.changed_since:,} whose payload columns were written since"
    if u.action != "mark" and u.dry_run:
        return (
            f"DRY RUN, nothing written: run {u.of_run_id} {u.action}d {u.rows_in_ledger:,} rows, all in archive files "
            f"whose sha256 matches the ledger's; {u.restorable:,} can be put back now; {alone}."
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


def undo_result(u: UndoResult) -> Shown:
    """``undo_summary``, and a live undo's batches (as the sweep's, "restored" for "changed")."""
    head = undo_summary(u)
    if u.dry_run:
        return Shown(notice(head, "info"), head)
    headers = ["restored" if h == "changed" else h for h in BATCH_HEADERS]
    return Shown(notice(head, _level(u.stop_reason)) + _batches_table(headers, u.batches), head)


RECENT_RUN_HEADERS = ("run_id", "started (UTC)", "stopped", "rows changed", "undone by")


def recent_runs(runs: Sequence[Mapping[str, Any]]) -> Shown:
    """The undo notebook without a run id: the recent sweep runs to choose from."""
    head = "No run_id given: nothing undone. Recent sweep runs in the ledger (newest first):"
    rows = [(r["run_id"], r["started_at"], r["stop_reason"], r["rows_changed"], r["undone_by"]) for r in runs]
    return Shown(notice(head, "info") + table(RECENT_RUN_HEADERS, rows), head + "\n" + text_table(RECENT_RUN_HEADERS, rows))


def show_inspect(r: InspectReport) -> None:
    display(inspect_report(r))


def show_preview(p: PreviewReport) -> None:
    display(preview_report(p))


def show_sweep(s: SweepResult) -> None:
    display(sweep_result(s))


def show_undo(u: UndoResult) -> None:
    display(undo_result(u))


def show_record(record: Mapping[str, Any]) -> None:
    """The run record as one ``application/json`` output marked with ``RECORD_KEY`` (what
    ``audit.record.read_record`` finds), one line of text beside it; nothing without IPython."""
    try:
        from IPython.display import display as ipython_display
    except ImportError:
        return
    summary = f"run {record['run_id']} ({record['notebook']}): {record['outcome'].get('status')}"
    # IPython's display() carries no annotations.
    cast(Callable[..., None], ipython_display)(
        {"application/json": record, "text/plain": summary}, raw=True, metadata={RECORD_KEY: {"kind": "run_record"}}
    )


# -- the sweep panel ---------------------------------------------------------------------


def panel_preview(report: PreviewReport, opts: Options) -> str:
    """The panel's preview: counts, cutoff, fingerprint, what Execute will do, the rows."""
    if report.candidates == 0:
        return notice(f"No candidates older than {fmt(report.cutoff_utc)}: nothing to sweep.", "ok")
    most = min(report.candidates, opts.batch_size * opts.max_batches)
    head = (
        f"{report.candidates:,} candidates older than {fmt(report.cutoff_utc)}; "
        f"next batch fingerprint {report.fingerprint}. Execute will change up to {plural(most, 'row')} in up to "
        f"{plural(math.ceil(most / opts.batch_size), 'batch')} (or stop after {opts.max_seconds:g} s), starting with "
        f"exactly these {plural(len(report.rows), 'row')}, oldest first. To confirm, type {report.candidates} below."
    )
    return notice(head, "info") + preview_rows(report, 260)


def panel_result(result: SweepResult) -> str:
    """The panel's summary of a finished sweep: rows, batches, time, stop reason, ledger."""
    text = (
        f"{plural(result.changed, 'row')} {_verb(result)} in {plural(len(result.batches), 'batch')}, "
        f"{result.seconds:.2f} s. Stopped: {result.stop_reason}."
        + (f" Remaining candidates: {result.remaining:,}." if result.remaining is not None else "")
        + (f" ({result.stop_detail})" if result.stop_detail else "")
        + (f" Retried: {'; '.join(result.retries)}." if result.retries else "")
        + _ledger_hint(result)
        + " Run the notebook's last cell (run.finish()) to write the record."
    )
    return notice(text, _level(result.stop_reason))


# -- progress ----------------------------------------------------------------------------


class ProgressFigures(Protocol):
    """Where a sweep stands after one batch: what ``progress.measure`` returns."""

    @property
    def batch(self) -> int: ...
    @property
    def batch_rows(self) -> int: ...
    @property
    def batch_ms(self) -> float: ...
    @property
    def done(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def percent(self) -> float: ...
    @property
    def rows_per_s(self) -> float: ...
    @property
    def seconds_left(self) -> float | None: ...


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def signals_text(signals: Mapping[str, Any], pauses: Sequence[Mapping[str, Any]]) -> str:
    """What the run saw of the foreground, for the progress line and the result: ``; lock
    waiters max 2, lag max 1.2 MB, 1 own lock timeout, paused 2x (4.0 s), budget waits 3.1 s, waited
    3.0 s for rows others held``;
    '' while there is nothing to say."""
    parts = []
    if signals.get("lock_waiters_max"):
        parts.append(f"lock waiters max {signals['lock_waiters_max']}")
    if signals.get("replication_lag_bytes_max"):
        parts.append(f"lag max {signals['replication_lag_bytes_max'] / 1e6:.1f} MB")
    if signals.get("own_lock_timeouts"):
        parts.append(plural(int(signals["own_lock_timeouts"]), "own lock timeout"))
    if pauses:
        parts.append(f"paused {len(pauses)}x ({sum(float(x['seconds']) for x in pauses):.1f} s)")
    if signals.get("budget_waits_seconds"):
        parts.append(f"budget waits {signals['budget_waits_seconds']:.1f} s")
    if signals.get("held_rows_waits_seconds"):
        parts.append(f"waited {signals['held_rows_waits_seconds']:.1f} s for rows others held")
    return ("; " + ", ".join(parts)) if parts else ""


def progress_line(p: ProgressFigures) -> str:
    """``batch 3: 1,000 rows in 45 ms; 3,000/4,365 (69%), 21,000 rows/s, ~0 s left``: the headless log line."""
    return (
        f"batch {p.batch}: {plural(p.batch_rows, 'row')} in {p.batch_ms:.0f} ms; "
        f"{p.done:,}/{p.total:,} ({p.percent:.0f}%), {p.rows_per_s:,.0f} rows/s, ~{_duration(p.seconds_left)} left"
    )


def _so_far(p: ProgressFigures, batches: int) -> str:
    return f"{p.done:,} of {p.total:,} rows ({p.percent:.0f}%) · {plural(batches, 'batch')} · {p.rows_per_s:,.0f} rows/s"


def progress_label(p: ProgressFigures, batches: int) -> str:
    """The progress bar's label while the sweep runs."""
    return f"{_so_far(p, batches)} · ~{_duration(p.seconds_left)} left"


def progress_final(p: ProgressFigures | None, result: SweepResult) -> str:
    """The progress bar's label once the sweep ended: the time left replaced by the stop reason."""
    stopped = f"stopped: {result.stop_reason or StopReason.FAILED}"
    return f"{_so_far(p, len(result.batches))} · {stopped}" if p else f"no batch committed · {stopped}"
