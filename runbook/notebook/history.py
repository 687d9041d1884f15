"""What the history notebook shows: the runs, their files' seals, and one run in detail."""

from __future__ import annotations

import html
from typing import Any

from ..ops.history import HistoryReport, RunEntry
from .render import Shown, fmt, notice, table, text_table

__all__ = ["RUN_HEADERS", "history_report"]

RUN_HEADERS = ("run_id", "kind", "target", "who", "started (UTC)", "parameters", "rows changed", "stopped", "undone by",
               "executed notebook")  # fmt: skip
_SHOWN_PARAMETERS = ("dry_run", "batch_size", "stale_after_days", "cutoff", "archive", "max_batches", "workers", "of_run_id")


def _who(who: dict[str, Any]) -> str:
    parts = [who.get("os_user"), who.get("jupyterhub_user") and f"hub {who['jupyterhub_user']}",
             who.get("session_user") and f"role {who['session_user']}"]  # fmt: skip
    return ", ".join(str(p) for p in parts if p)


def _row(r: RunEntry) -> tuple[Any, ...]:
    params = ", ".join(f"{k}={r.parameters[k]}" for k in _SHOWN_PARAMETERS if r.parameters.get(k) not in (None, ""))
    files = "; ".join(f"{name}: {state}" for name, state in sorted(r.files.items())) or "not on this machine"
    stopped = r.stop_reason or ("running" if r.finished_at is None else "")
    undo = ", ".join(r.undone_by) or (f"undoes {r.undoes_run_id}" if r.undoes_run_id else "")
    when = r.started_at.strftime("%Y-%m-%d %H:%M:%S")
    return (r.run_id, r.kind, r.target, _who(r.who), when, params, r.rows_changed, stopped, undo, files)


def history_report(h: HistoryReport) -> Shown:
    """The runs newest first, a warning for every edited or missing executed notebook, and
    the run asked for in detail."""
    rows = [_row(r) for r in h.runs]
    head = f"{len(h.runs):,} run(s) of {h.target or 'every target'} in the last {h.days:g} days, newest first."
    bad = [(r.run_id, name, state) for r in h.runs for name, state in sorted(r.files.items()) if state != "match"]
    parts = [notice(head, "info"), table(RUN_HEADERS, rows)]
    parts += [notice(f"run {rid}: executed notebook {name} is {state.upper()} (its seal is in the ledger)", "error")
              for rid, name, state in bad]  # fmt: skip
    plain = head + "\n" + text_table(RUN_HEADERS, rows) + "".join(f"\n{n}: {s}" for _, n, s in bad)
    if h.detail is not None:
        d = h.detail
        batch_rows = [
            (b["batch"], b["rows"], b["committed_at"], None if b["seconds"] is None else round(b["seconds"] * 1000, 1),
             None if b["wal_bytes"] is None else round(b["wal_bytes"] / 1e6, 2), b["archive_file"] or "")
            for b in d.batches
        ]  # fmt: skip
        headers = ("batch", "rows", "committed (UTC)", "ms", "WAL MB", "archive file")
        if d.undo_now is not None:
            u = d.undo_now
            undo_text = f"undo now would restore {u['restorable']:,} of the {u['rows_in_ledger']:,} rows it changed"
        else:
            undo_text = d.undo_error or "an undo run: nothing to undo"
        title = f"Run {d.run_id}: {len(d.batches):,} batch(es); {undo_text}."
        parts += [notice(title, "info"), table(headers, batch_rows), f"<pre>{html.escape(fmt(d.outcome))}</pre>"]
        plain += f"\n{title}\n" + text_table(headers, batch_rows[-20:])
    return Shown("".join(parts), plain)
