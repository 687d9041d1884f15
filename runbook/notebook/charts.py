"""Static charts of inspect and sweep results, for the executed notebook kept as the record.

``inspect_png`` draws with matplotlib's Agg renderer into PNG bytes, touching no global
pyplot state (the kernel's plotting backend is left alone, no figure leaks); matplotlib
is imported inside it, so ``import runbook`` stays fast. ``sweep_svg`` writes its SVG by
hand: it ends every live sweep, where importing matplotlib alone took 1.1 s. ``show_*``
display them as ``image/png`` / ``image/svg+xml`` outputs, which papermill stores in the
notebook (a live widget would not survive into the record).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from xml.sax.saxutils import escape

from ..ops.inspection import Count, InspectReport
from .progress import plural
from ..ops.sweep import SweepResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["inspect_png", "sweep_svg", "show_inspect_charts", "show_sweep_chart"]

_ROWS = "#9db4cc"
_CANDIDATES = "#d9534f"
_DURATION = "#2b5d8a"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _integer_ticks(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    # Few ticks with thousands separators: long counts must not run into each other.
    axis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{int(value):,}"))


def _bars(ax: Axes, counts: list[Count], title: str, horizontal: bool) -> None:
    labels = [c.label for c in counts]
    rows = [c.rows for c in counts]
    candidates = [c.candidates for c in counts]
    positions = list(range(len(counts)))
    if horizontal:
        # Rows behind, candidates in front: the red part of each bar is what the sweep takes.
        ax.barh(positions, rows, color=_ROWS, label="rows")
        ax.barh(positions, candidates, color=_CANDIDATES, label="candidates", height=0.5)
        ax.set_yticks(positions, labels)
        ax.invert_yaxis()
        ax.set_xlabel("rows")
        _integer_ticks(ax.xaxis)
    else:
        ax.bar(positions, rows, color=_ROWS, label="rows")
        ax.bar(positions, candidates, color=_CANDIDATES, label="candidates", width=0.5)
        ax.set_xticks(positions, labels)
        ax.set_ylabel("rows")
        _integer_ticks(ax.yaxis)
    ax.set_title(title, fontsize=10)
    if not counts:
        ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)


def inspect_png(report: InspectReport) -> bytes:
    """Three panels: rows and candidates by age bucket, by status, by purpose. Returns PNG bytes."""
    fig = _figure(12, 3.6)
    axes = fig.subplots(1, 3)
    _bars(axes[0], report.by_age, "by age (created_at)", horizontal=False)
    _bars(axes[1], report.by_status, "by status (all purposes)", horizontal=True)
    _bars(axes[2], report.by_purpose, "by purpose", horizontal=True)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"{report.candidates:,} candidates of {report.total_rows:,} rows; cutoff {report.cutoff_utc:%Y-%m-%d %H:%M} UTC",
        fontsize=11,
    )
    return _png(fig)


def _nice(top: float) -> float:
    """The smallest 1/2/5 x 10^k at or above ``top`` (an axis maximum)."""
    if top <= 0:
        return 1.0
    step = 10.0 ** math.floor(math.log10(top))
    return next(float(m * step) for m in (1, 2, 5, 10) if m * step >= top)


def sweep_svg(result: SweepResult) -> str:
    """Rows changed (bars, left axis) and duration in ms (line, right axis) per batch, as SVG.

    Drawn by hand, without matplotlib: the chart comes at the end of every live sweep,
    and importing matplotlib alone took 1.1 s there. Raises ValueError for a dry run or
    a sweep without batches: there is nothing to draw.
    """
    if result.dry_run or not result.batches:
        raise ValueError("a dry run or a sweep without batches has no per-batch chart")
    width, height, left, right, top, bottom = 1000, 340, 80, 80, 40, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    batches = result.batches
    rows_max = _nice(max(b.changed for b in batches))
    ms_max = _nice(max(b.seconds * 1000 for b in batches))
    slot = plot_w / len(batches)
    bar_w = max(slot * 0.8, 0.5)

    def y(value: float, top_value: float) -> float:
        return top + plot_h * (1 - value / top_value)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="13">{escape(_title(result))}</text>',
    ]
    for i in range(5):  # gridlines and both axes' ticks
        frac = i / 4
        gy = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{gy:.1f}" x2="{left + plot_w}" y2="{gy:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 6}" y="{gy + 4:.1f}" text-anchor="end">{rows_max * frac:,.0f}</text>')
        parts.append(f'<text x="{left + plot_w + 6}" y="{gy + 4:.1f}">{ms_max * frac:,.{0 if ms_max >= 10 else 1}f}</text>')
    bars = "".join(
        f'<rect x="{left + i * slot + (slot - bar_w) / 2:.2f}" y="{y(b.changed, rows_max):.2f}" width="{bar_w:.2f}" '
        f'height="{plot_h * b.changed / rows_max:.2f}"/>'
        for i, b in enumerate(batches)
    )
    parts.append(f'<g fill="{_ROWS}" class="rows">{bars}</g>')
    points = " ".join(f"{left + (i + 0.5) * slot:.2f},{y(b.seconds * 1000, ms_max):.2f}" for i, b in enumerate(batches))
    parts.append(f'<polyline class="duration" fill="none" stroke="{_DURATION}" stroke-width="1.5" points="{points}"/>')
    parts += [
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>',
        f'<text x="{left + plot_w / 2}" y="{top + plot_h + 18}" text-anchor="middle">batch {batches[0].number}'
        f" to {batches[-1].number}</text>",
        f'<text transform="translate(18 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">rows changed</text>',
        f'<text transform="translate({width - 14} {top + plot_h / 2}) rotate(90)" text-anchor="middle">batch duration (ms)</text>',
        f'<rect x="{width / 2 - 150}" y="{height - 26}" width="12" height="10" fill="{_ROWS}"/>',
        f'<text x="{width / 2 - 134}" y="{height - 17}">rows changed</text>',
        f'<line x1="{width / 2 + 20}" y1="{height - 21}" x2="{width / 2 + 40}" y2="{height - 21}" stroke="{_DURATION}" stroke-width="2"/>',
        f'<text x="{width / 2 + 46}" y="{height - 17}">duration (ms)</text>',
        "</svg>",
    ]
    return "".join(parts)


def _title(result: SweepResult) -> str:
    return (
        f"{plural(result.changed, 'row')} in {plural(len(result.batches), 'batch')}, {result.seconds:.2f} s; "
        f"stopped: {result.stop_reason}"
    )


def _show(image: bytes | str, alt: str) -> None:
    """Display PNG bytes as image/png, SVG text as image/svg+xml."""
    try:
        from IPython.display import display
    except ImportError:  # plain Python: no place to put a picture
        return
    if isinstance(image, str):
        data: dict[str, Any] = {"image/svg+xml": image, "text/plain": alt}
    else:
        data = {"image/png": base64.b64encode(image).decode("ascii"), "text/plain": alt}
    # IPython's display() carries no annotations.
    cast(Callable[..., None], display)(data, raw=True)


def show_inspect_charts(report: InspectReport) -> bytes | None:
    """Display inspect_png(report) as an image/png output; nothing when the table is empty.

    Returns the PNG shown, or None. Writes nothing but the output.
    """
    if report.total_rows == 0:
        return None
    png = inspect_png(report)
    _show(png, f"[chart: {report.candidates:,} candidates by age, status and purpose]")
    return png


def show_sweep_chart(result: SweepResult) -> str | None:
    """Display sweep_svg(result) as an image/svg+xml output; nothing for a dry run or zero batches.

    Returns the SVG shown, or None. Writes nothing but the output.
    """
    if result.dry_run or not result.batches:
        return None
    svg = sweep_svg(result)
    _show(svg, f"[chart: rows and duration of {len(result.batches):,} batches]")
    return svg
