"""What the notebooks show: every table render.py draws is whole; every chart is a PNG of its
size, none for a dry run or an empty table, and its count axes read as distinct integers."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING

import psycopg
import pytest

from runbook import Target, inspect, options, preview, sweep, undo
from runbook.db.ledger import recent_runs
from runbook.notebook import render
from runbook.notebook.charts import inspect_figure, inspect_png, show_inspect_charts, show_sweep_chart, sweep_figure, sweep_png
from runbook.ops.inspection import Count, InspectReport
from runbook.ops.sweep import BatchResult, SweepResult
from tests.pictures import png_size
from tests.rows import insert

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# -- tables ------------------------------------------------------------------------------


def table_shapes(html: str) -> list[tuple[int, list[int]]]:
    """Each HTML table's header count, and the cell count of each of its body rows."""
    shapes = []
    for table in re.findall(r"<table.*?</table>", html, re.S):
        head = re.search(r"<thead>(.*?)</thead>", table, re.S)
        body = re.search(r"<tbody>(.*?)</tbody>", table, re.S)
        assert head is not None and body is not None
        rows = re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)
        shapes.append((head.group(1).count("<th>"), [row.count("<td") for row in rows]))
    return shapes


def test_every_table_has_as_many_cells_in_each_row_as_headers(conn: psycopg.Connection) -> None:
    for i in range(5):
        insert(conn, status="queued", age_days=10 + i)
    insert(conn, status="completed", age_days=30)
    done = sweep(conn, Target(), options(batch_size=2, dry_run=False), run_id="render-sweep")
    assert len(done.batches) == 3
    for i in range(3):
        insert(conn, status="queued", age_days=20 + i)
    restored = undo(conn, Target(), options(batch_size=2, dry_run=False), of_run_id="render-sweep", run_id="render-undo")
    assert len(restored.batches) == 3

    shown = {
        "inspect": render.inspect_report(inspect(conn, Target(), options())),
        "preview": render.preview_report(preview(conn, Target(), options(batch_size=2))),
        "sweep": render.sweep_result(done),
        "undo": render.undo_result(restored),
        "recent runs": render.recent_runs(recent_runs(conn)),
    }
    expected_tables = {"inspect": 4, "preview": 1, "sweep": 1, "undo": 1, "recent runs": 1}
    for what, rendering in shown.items():
        shapes = table_shapes(rendering.html)
        assert len(shapes) == expected_tables[what], what
        for headers, rows in shapes:
            assert rows, f"{what}: a table without rows proves nothing"
            assert set(rows) == {headers}, f"{what}: {headers} headers, rows of {rows} cells"
    # The plain-text twins have their header line, a rule and one line per row.
    assert len(shown["sweep"].plain.splitlines()) == 1 + 2 + 3
    assert len(shown["recent runs"].plain.splitlines()) == 1 + 2 + 1


# -- charts ------------------------------------------------------------------------------


def test_inspect_and_sweep_charts_are_pngs(conn: psycopg.Connection, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(7):
        insert(conn, status="queued", age_days=3 + 20 * i)
    insert(conn, status=None, age_days=40)
    insert(conn, status="queued", age_days=40, purpose="batch")
    report = inspect(conn, Target(), options())
    png = inspect_png(report)
    assert png_size(png) == (1200, 360) and len(png) > 20_000
    assert show_inspect_charts(report) == png

    result = sweep(conn, Target(), options(batch_size=2, dry_run=False))
    assert [b.changed for b in result.batches] == [2, 2, 2]
    png = sweep_png(result)
    assert png_size(png) == (1000, 340)
    assert show_sweep_chart(result) == png
    fig = sweep_figure(result)
    rows, ms = fig.axes
    assert [bar.get_height() for bar in rows.patches] == [2, 2, 2]
    assert [bar.get_x() + bar.get_width() / 2 for bar in rows.patches] == [1, 2, 3]  # at the batch numbers
    (line,) = ms.get_lines()
    assert list(line.get_xdata()) == [1, 2, 3]
    assert list(line.get_ydata()) == [b.seconds * 1000 for b in result.batches]
    title = rows.get_title()
    assert "6 rows in 3 batches" in title and "stopped: done" in title


def test_no_chart_for_a_dry_run_or_an_empty_table(conn: psycopg.Connection) -> None:
    assert show_inspect_charts(inspect(conn, Target(), options())) is None
    dry = sweep(conn, Target(), options())
    assert show_sweep_chart(dry) is None
    with pytest.raises(ValueError, match="no per-batch chart"):
        sweep_png(dry)
    empty = sweep(conn, Target(), options(dry_run=False))
    assert empty.batches == [] and show_sweep_chart(empty) is None


# -- chart ticks -------------------------------------------------------------------------


def drawn_ticks(fig: Figure, axis_name: str, index: int = 0) -> list[tuple[float, str]]:
    """Where a drawn figure puts its ticks on one axis (x or y) of its ``index``-th axes,
    and the label each shows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    axis = getattr(fig.axes[index], f"{axis_name}axis")
    low, high = sorted(axis.get_view_interval())
    shown = [t for t in axis.get_major_ticks() if low - 1e-9 <= t.get_loc() <= high + 1e-9]
    # label1 on the left or bottom, label2 on the right (the duration axis) or top.
    return [(t.get_loc(), (t.label1 if t.label1.get_visible() else t.label2).get_text()) for t in shown]


def assert_distinct_integers(ticks: list[tuple[float, str]]) -> None:
    """At least two ticks, each labelled once, with the integer it stands at (not 1.25 as "1")."""
    labels = [label for _, label in ticks]
    assert len(ticks) >= 2, labels
    assert len(set(labels)) == len(labels), f"a tick label repeats: {labels}"
    assert [int(label.replace(",", "")) for label in labels] == [loc for loc, _ in ticks], f"labels off their ticks: {ticks}"


def assert_distinct_numbers(ticks: list[tuple[float, str]]) -> None:
    """Milliseconds: at least two ticks, each labelled once, with the number it stands at."""
    labels = [label for _, label in ticks]
    assert len(ticks) >= 2 and len(set(labels)) == len(labels), labels
    assert [float(label.replace(",", "").replace("\N{MINUS SIGN}", "-")) for label in labels] == pytest.approx([loc for loc, _ in ticks])


def sweep_of(rows: list[int], ms: list[float] | None = None, first: int = 1) -> SweepResult:
    result = SweepResult(target={}, options={}, cutoff_utc=datetime(2026, 1, 1), dry_run=False, candidates_at_start=sum(rows))
    for n, (changed, took) in enumerate(zip(rows, ms or [40.0] * len(rows), strict=True), first):
        result.batches.append(BatchResult(n, changed, changed, took / 1000, "2026-01-01T00:00:00.000Z"))
        result.changed += changed
    result.stop_reason = "done"
    return result


@pytest.mark.parametrize(
    "rows",
    [[1], [0, 1], [1, 1, 1], [0, 0, 1, 1, 0], [5], [0, 5], [1, 2, 3, 4, 5], [3, 5, 2, 4], [2, 2, 2], [1000, 1000, 365]],
)
def test_sweep_chart_ticks_are_distinct_integers_for_small_ranges(rows: list[int]) -> None:
    fig = sweep_figure(sweep_of(rows))
    assert_distinct_integers(drawn_ticks(fig, "y"))  # rows changed
    batches = drawn_ticks(fig, "x")
    if len(rows) == 1:
        assert batches == [(1, "1")]
    else:
        assert_distinct_integers(batches)
        assert {loc for loc, _ in batches} <= set(range(1, len(rows) + 1))
    assert_distinct_numbers(drawn_ticks(fig, "y", index=1))  # duration (ms)


def test_sweep_chart_durations_below_a_millisecond_keep_distinct_labels() -> None:
    fig = sweep_figure(sweep_of([1, 1, 1], ms=[0.2, 0.4, 0.3]))
    assert_distinct_numbers(drawn_ticks(fig, "y", index=1))  # duration (ms)


def test_sweep_chart_batch_numbers_of_a_resumed_run_are_integers() -> None:
    fig = sweep_figure(sweep_of([2, 2, 1], first=41))
    batches = drawn_ticks(fig, "x")
    assert_distinct_integers(batches)
    assert {loc for loc, _ in batches} <= {41, 42, 43}


@pytest.mark.parametrize("top", [1, 2, 5])
def test_inspect_chart_ticks_are_distinct_integers_for_small_ranges(top: int) -> None:
    counts = [Count("a", top, top), Count("b", 0, 0)]
    report = InspectReport(
        target={}, database="", now_utc=datetime(2026, 1, 2), cutoff_utc=datetime(2026, 1, 1), batch_size=1000,
        candidates=top, oldest_candidate=None, batches_needed=1, total_rows=top, by_status=counts, by_purpose=counts,
        by_age=counts, null_status_stale=0, incomplete_stale=0, plan={}, full_scan=False, index_suggestion="",
    )  # fmt: skip
    fig = inspect_figure(report)
    assert_distinct_integers(drawn_ticks(fig, "y", index=0))  # by age: vertical bars
    assert_distinct_integers(drawn_ticks(fig, "x", index=1))  # by status: horizontal
    assert_distinct_integers(drawn_ticks(fig, "x", index=2))  # by purpose: horizontal


# -- a sweep of many batches -------------------------------------------------------------


def test_a_sweep_of_25000_batches_draws_at_most_most_bars_bars_holding_every_row_and_the_slowest_batch() -> None:
    from runbook.notebook.charts import MOST_BARS

    rows = [100 + n % 17 for n in range(25_000)]
    ms = [20.0 + n % 50 for n in range(25_000)]
    ms[12_345] = 987.5  # one slow batch must stay visible
    result = sweep_of(rows, ms=ms)
    fig = sweep_figure(result)
    bars, durations = fig.axes
    assert 200 <= len(bars.patches) <= MOST_BARS
    assert sum(bar.get_height() for bar in bars.patches) == sum(rows)
    (line,) = durations.get_lines()
    assert max(line.get_ydata()) == 987.5
    assert "per 105 batches" in bars.get_ylabel()
    assert f"{sum(rows):,} rows in 25,000 batches" in bars.get_title()
    assert png_size(sweep_png(result)) == (1000, 340)


def test_up_to_most_bars_batches_draw_a_bar_each() -> None:
    from runbook.notebook.charts import MOST_BARS

    fig = sweep_figure(sweep_of([1] * MOST_BARS))
    assert len(fig.axes[0].patches) == MOST_BARS and fig.axes[0].get_ylabel() == "rows changed"


def test_the_batch_table_of_a_long_sweep_shows_the_first_and_last_batches_and_says_where_the_rest_are() -> None:
    result = sweep_of([3] * 25_000)
    shown = render.sweep_result(result)
    ((headers, cells),) = table_shapes(shown.html)
    assert headers == len(render.BATCH_HEADERS) and len(cells) == render.MOST_BATCH_ROWS
    numbers = [int(n.replace(",", "")) for n in re.findall(r"<tr><td[^>]*>([\d,]+)</td>", shown.html)]
    assert numbers == [*range(1, 101), *range(24_901, 25_001)]
    assert "The 24,800 batches between batch 100 and batch 24,901 are not shown" in shown.html
    assert "25,000 batches" in shown.plain
    short = render.sweep_result(sweep_of([3] * render.MOST_BATCH_ROWS))
    assert len(table_shapes(short.html)[0][1]) == render.MOST_BATCH_ROWS and "not shown" not in short.html
