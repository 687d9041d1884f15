"""Static charts of inspect and sweep results, for the executed notebook kept as the record.

Every chart is drawn with matplotlib's Agg renderer into PNG bytes, touching no global
pyplot state (the kernel's plotting backend is left alone, no figure leaks). matplotlib
is imported inside the drawing functions only, never at ``import runbook`` nor per batch:
a chart is drawn once a sweep has ended (importing matplotlib takes about a second).
``show_*`` display the PNG as an ``image/png`` output, which papermill stores in the
notebook (a live widget would not survive into the record).

Axes that count (rows, candidates, batch numbers) have integer ticks only, each label
once: a locator that may only pick integers, and a view at least one unit tall.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..ops.history import HistoryReport
from ..ops.inspection import Count, InspectReport
from ..ops.sweep import SweepResult
from .render import plural

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

__all__ = [
    "inspect_figure", "inspect_png", "MOST_BARS", "Bars", "sweep_bars", "sweep_figure", "sweep_png", "history_figure", "show_inspect_charts",
    "show_sweep_chart", "show_history_chart",
]  # fmt: skip

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


def _integer_ticks(axis: Axis, nbins: int = 4) -> None:
    """Few integer ticks with thousands separators: long counts must not run into each
    other, and a 0-1 axis reads 0, 1 (not 0.0, 0.2, ... nor 0, 0, 0, 1, 1). One tick is
    enough (a single batch): with two required, matplotlib would give up on integers."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=nbins, integer=True, min_n_ticks=1))
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{round(value):,}"))


def _count_limits(ax: Axes, top: float, *, horizontal: bool) -> None:
    """A count axis from 0 to a little above ``top``, and at least to 1."""
    limit = max(top, 1) * 1.05
    if horizontal:
        ax.set_xlim(0, limit)
    else:
        ax.set_ylim(0, limit)


def _bars(ax: Axes, counts: list[Count], title: str, horizontal: bool) -> None:
    labels = [c.label for c in counts]
    rows = [c.rows for c in counts]
    candidates = [c.candidates for c in counts]
    positions = list(range(len(counts)))
    top = max(rows + candidates + [0])
    if horizontal:
        # Rows behind, candidates in front: the red part of each bar is what the sweep takes.
        ax.barh(positions, rows, color=_ROWS, label="rows")
        ax.barh(positions, candidates, color=_CANDIDATES, label="candidates", height=0.5)
        ax.set_yticks(positions, labels)
        ax.invert_yaxis()
        ax.set_xlabel("rows")
        _count_limits(ax, top, horizontal=True)
        _integer_ticks(ax.xaxis)
    else:
        ax.bar(positions, rows, color=_ROWS, label="rows")
        ax.bar(positions, candidates, color=_CANDIDATES, label="candidates", width=0.5)
        ax.set_xticks(positions, labels)
        ax.set_ylabel("rows")
        _count_limits(ax, top, horizontal=False)
        _integer_ticks(ax.yaxis)
    ax.set_title(title, fontsize=10)
    if not counts:
        ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)


def inspect_figure(report: InspectReport) -> Figure:
    """Three panels: rows and candidates by age bucket, by status, by purpose (an age rule: by age only)."""
    marks = report.action == "mark"  # an age rule has no status or purpose to break down by
    fig = _figure(12 if marks else 5, 3.6)
    axes = fig.subplots(1, 3) if marks else [fig.subplots(1, 1)]
    _bars(axes[0], report.by_age, f"by age ({report.target.get('time_column', 'created_at')})", horizontal=False)
    if marks:
        _bars(axes[1], report.by_status, "by status (all purposes)", horizontal=True)
        _bars(axes[2], report.by_purpose, "by purpose", horizontal=True)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"{report.candidates:,} candidates of {report.total_rows:,} rows; cutoff {report.cutoff_utc:%Y-%m-%d %H:%M} UTC",
        fontsize=11,
    )
    return fig


def inspect_png(report: InspectReport) -> bytes:
    """``inspect_figure`` as PNG bytes (1200 x 360)."""
    return _png(inspect_figure(report))


# A sweep of 10M rows can take 25,000 batches; a bar each cost matplotlib ~11 KB, 290 MB at that
# size (the notebook's process peaked at 392 MB, 160 MB with bars grouped: bench/RESULTS.md).
# Above this many, consecutive batches share one bar.
MOST_BARS = 240


@dataclass(frozen=True)
class Bars:
    """What the sweep chart draws: one bar per group of ``per`` consecutive batches (1 up to
    MOST_BARS batches), at the group's first batch number, with the rows its batches changed
    and its slowest batch's milliseconds."""

    per: int
    first: list[int]
    rows: list[int]
    slowest_ms: list[float]


def sweep_bars(result: SweepResult) -> Bars:
    """Group the batches for the chart, at most MOST_BARS groups. Pure."""
    batches = result.batches
    per = max(1, math.ceil(len(batches) / MOST_BARS))
    groups = [batches[i : i + per] for i in range(0, len(batches), per)]
    return Bars(
        per=per,
        first=[g[0].number for g in groups],
        rows=[sum(b.changed for b in g) for g in groups],
        slowest_ms=[max(b.seconds for b in g) * 1000 for g in groups],
    )


def sweep_figure(result: SweepResult) -> Figure:
    """Rows changed (bars, left axis) and duration in ms (line, right axis) per batch, or per
    group of consecutive batches above MOST_BARS (the group's rows, its slowest batch).

    Raises ValueError for a dry run or a sweep without batches: there is nothing to draw.
    """
    if result.dry_run or not result.batches:
        raise ValueError("a dry run or a sweep without batches has no per-batch chart")
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    batches = result.batches
    bars_of = sweep_bars(result)
    numbers, per = bars_of.first, bars_of.per
    each = "" if per == 1 else f" per {per:,} batches"
    fig = _figure(10, 3.4)
    ax = fig.subplots()
    bars = ax.bar(numbers, bars_of.rows, width=0.8 * per, align="center" if per == 1 else "edge", color=_ROWS,
                  label="rows changed")  # fmt: skip
    ax.set_xlim(min(numbers) - 0.6, max(numbers) + (0.6 if per == 1 else per))
    _count_limits(ax, max(bars_of.rows), horizontal=False)
    _integer_ticks(ax.yaxis, nbins=6)
    _integer_ticks(ax.xaxis, nbins=8)
    ax.set_xlabel(f"batch {batches[0].number:,} to {batches[-1].number:,}")
    ax.set_ylabel("rows changed" + each)
    ax.grid(axis="y", color="#e5e5e5")
    ax.set_axisbelow(True)

    ms = ax.twinx()
    middle = [n + (per * 0.4 if per > 1 else 0) for n in numbers]
    (line,) = ms.plot(middle, bars_of.slowest_ms, color=_DURATION, linewidth=1.5, label="duration (ms)",
                      marker="o" if len(numbers) <= 30 else None, markersize=3)  # fmt: skip
    ms.set_ylim(0, max(max(bars_of.slowest_ms), 1.0) * 1.1)
    # Milliseconds need not be whole, but each label is shown once: no offset, no rounding away.
    ms.yaxis.set_major_locator(MaxNLocator(nbins=4))
    plain = ScalarFormatter(useOffset=False)
    plain.set_scientific(False)
    ms.yaxis.set_major_formatter(plain)
    ms.set_ylabel("batch duration (ms)" if per == 1 else "slowest batch (ms)")
    # Below the axes, where no bar can be.
    labels = ["rows changed" + each, "duration (ms)" if per == 1 else f"slowest of {per:,} (ms)"]
    fig.legend([bars.patches[0], line], labels, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    ax.set_title(_title(result), fontsize=11)
    return fig


def sweep_png(result: SweepResult) -> bytes:
    """``sweep_figure`` as PNG bytes (1000 x 340)."""
    return _png(sweep_figure(result))


def _title(result: SweepResult) -> str:
    return (
        f"{plural(result.changed, 'row')} in {plural(len(result.batches), 'batch')}, {result.seconds:.2f} s; "
        f"stopped: {result.stop_reason}"
    )


def _show(png: bytes, alt: str) -> None:
    """Display PNG bytes as an image/png output, with ``alt`` as its text/plain."""
    try:
        from IPython.display import display
    except ImportError:  # plain Python: no place to put a picture
        return
    data: dict[str, Any] = {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": alt}
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


def show_sweep_chart(result: SweepResult) -> bytes | None:
    """Display sweep_png(result) as an image/png output; nothing for a dry run or zero batches.

    Returns the PNG shown, or None. Writes nothing but the output.
    """
    if result.dry_run or not result.batches:
        return None
    png = sweep_png(result)
    _show(png, f"[chart: rows and duration of {len(result.batches):,} batches]")
    return png


def history_figure(report: HistoryReport) -> Figure:
    """The backlog over time per target (inspect's counts and each sweep's candidates when it
    started) and, below, the rows each sweep removed."""
    fig = _figure(10, 5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for name in sorted({p["target"] for p in report.backlog}):
        points = [p for p in report.backlog if p["target"] == name]
        top.plot([p["at"] for p in points], [p["candidates"] for p in points], marker="o", label=name)
    top.set_title("candidates over time (inspect records, and each sweep at its start)", fontsize=10)
    top.set_ylabel("candidates")
    _integer_ticks(top.yaxis)
    if report.backlog:
        top.legend(loc="upper left", fontsize=8)
    swept = [p for p in report.backlog if "removed" in p]
    bottom.bar([p["at"] for p in swept], [p["removed"] for p in swept], width=0.02, color=_CANDIDATES)
    bottom.set_title("rows each sweep changed", fontsize=10)
    bottom.set_ylabel("rows")
    _integer_ticks(bottom.yaxis)
    fig.autofmt_xdate()
    return fig


def show_history_chart(report: HistoryReport) -> bytes | None:
    """Display ``history_figure(report)`` as an image/png output; nothing without a point.
    Returns the PNG shown, or None. Writes nothing but the output."""
    if not report.backlog:
        return None
    png = _png(history_figure(report))
    _show(png, f"[chart: the backlog over time, {len(report.backlog):,} points]")
    return png
