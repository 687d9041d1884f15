"""HTML and plain-text renderings of reports, for notebooks and logs. Pure functions."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ..ops.preview import ROW_HEADERS, PreviewReport

__all__ = ["fmt", "table", "notice", "text_table"]


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


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    """An HTML table; numbers right-aligned."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for value in row:
            align = "right" if isinstance(value, (int, float)) and not isinstance(value, bool) else "left"
            cells.append(f'<td style="text-align:{align}">{html.escape(fmt(value))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption style='text-align:left'><b>{html.escape(caption)}</b></caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def preview_rows(report: PreviewReport, max_height_px: int) -> str:
    """A preview's rows as a scrollable HTML table, for the notebook and the panel alike."""
    rows = [(r.id, r.status, r.created_at, r.purpose) for r in report.rows]
    # Left-aligned like a cell's output table (JupyterLab's widget styles centre tables).
    html_table = table(list(ROW_HEADERS), rows).replace("<table>", '<table style="margin-left:0">', 1)
    return f'<div class="runbook-preview-rows" style="max-height:{max_height_px}px;overflow:auto">{html_table}</div>'


def notice(text: str, level: str = "warning") -> str:
    colour = {"warning": "#fff3cd", "error": "#f8d7da", "info": "#e7f1ff", "ok": "#d1e7dd"}[level]
    return f'<div style="background:{colour};padding:6px 10px;margin:4px 0;border-radius:4px">{html.escape(text)}</div>'


def text_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The same table as plain text, for logs and text/plain outputs."""
    cells = [list(headers)] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
