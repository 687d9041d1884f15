"""Static charts (PNG) of inspect and sweep results, for the executed notebook kept as the record.

The ``*_png`` functions are pure: they draw with matplotlib's Agg renderer into bytes
and touch no global pyplot state, so they neither change the kernel's plotting backend
nor leak figures. ``show_*`` display the PNG as an ``image/png`` output, which papermill
stores in the notebook (a live widget would not survive into the record).
matplotlib is imported inside the functions: ``import runbook`` stays fast.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .inspection import Count, InspectReport
from .progress import plural
from .sweep import SweepResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["inspect_png", "sweep_png", "show_inspect_charts", "show_sweep_chart"]

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


def sweep_png(result: SweepResult) -> bytes:
    """Rows changed (bars) and duration in ms (line) per batch. Returns PNG bytes.

    Raises ValueError for a dry run or a sweep without batches: there is nothing to draw.
    """
    if result.dry_run or not result.batches:
        raise ValueError("a dry run or a sweep without batches has no per-batch chart")
    numbers = [b.number for b in result.batches]
    fig = _figure(10, 3.4)
    ax = fig.subplots()
    ax.bar(numbers, [b.changed for b in result.batches], color=_ROWS, label="rows changed")
    ax.set_xlabel("batch")
    ax.set_ylabel("rows changed")
    _integer_ticks(ax.yaxis)
    ms = ax.twinx()
    ms.plot(numbers, [b.seconds * 1000 for b in result.batches], color=_DURATION, marker="o", markersize=3, label="duration (ms)")
    ms.set_ylabel("batch duration (ms)")
    ms.set_ylim(bottom=0)
    if len(numbers) <= 20:
        ax.set_xticks(numbers)
    else:
        _integer_ticks(ax.xaxis)
    # Without limits a single batch's bar fills the whole width.
    pad = 0.6 + max(0, 3 - len(numbers)) / 2
    ax.set_xlim(numbers[0] - pad, numbers[-1] + pad)
    ax.set_title(
        f"{plural(result.changed, 'row')} in {plural(len(result.batches), 'batch')}, {result.seconds:.2f} s; "
        f"stopped: {result.stop_reason}",
        fontsize=10,
    )
    handles = ax.get_legend_handles_labels()[0] + ms.get_legend_handles_labels()[0]
    # Below the plot: inside it, the legend would hide the last batches.
    ax.legend(handles, [str(h.get_label()) for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
    return _png(fig)


def _show(png: bytes, alt: str) -> None:
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
