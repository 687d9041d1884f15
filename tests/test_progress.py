"""How a running sweep shows its progress: one line per report, headless lines for the first and
last batch and every few seconds (or every batch), a progress bar in JupyterLab, nothing for a
dry run."""

from __future__ import annotations

import re
from datetime import datetime

import psycopg
import pytest

from runbook import Target, logs, options, sweep
from runbook.notebook.progress import ProgressBar, measure, progress_reporter
from runbook.notebook.render import progress_line
from runbook.ops.sweep import BatchResult, SweepResult
from tests.rows import insert


def _result(candidates: int, batch_rows: list[int], ms: float = 45.0) -> tuple[SweepResult, BatchResult]:
    result = SweepResult(target={}, options={}, cutoff_utc=datetime(2026, 1, 1), dry_run=False, candidates_at_start=candidates)
    for n, rows in enumerate(batch_rows, 1):
        result.batches.append(BatchResult(n, rows, rows, ms / 1000, "2026-01-01T00:00:00.000Z"))
        result.changed += rows
    return result, result.batches[-1]


def test_progress_line_reads_like_the_log_should() -> None:
    result, batch = _result(4365, [1000, 1000, 1000])
    assert progress_line(measure(result, batch, elapsed_s=1.0)) == (
        "batch 3: 1,000 rows in 45 ms; 3,000/4,365 (69%), 3,000 rows/s, ~0 s left"
    )
    assert progress_line(measure(result, batch, elapsed_s=300.0)).endswith("10 rows/s, ~2 min left")
    # a later pass can find more than the snapshot had: never more than 100 %
    over, last = _result(2, [2, 1])
    assert measure(over, last, 1.0).percent == 100.0 and measure(over, last, 1.0).total == 3


def test_headless_progress_prints_the_first_and_last_batch_and_then_every_few_seconds(
    conn: psycopg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.show_on_stdout()  # as start() does: the lines are log records
    for i in range(7):
        insert(conn, status="queued", age_days=10 + i)
    sweep(conn, Target(), options(batch_size=2, dry_run=False), on_batch=progress_reporter(False))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(";")[0].split(" in ")[0] for line in lines] == ["batch 1: 2 rows", "batch 4: 1 row"]
    assert lines[-1].split("; ")[1].startswith("7/7 (100%)")


def test_headless_progress_prints_one_line_per_batch_when_asked(conn: psycopg.Connection, capsys: pytest.CaptureFixture[str]) -> None:
    logs.show_on_stdout()  # as start() does: the lines are log records
    for i in range(5):
        insert(conn, status="queued", age_days=10 + i)
    sweep(conn, Target(), options(batch_size=2, dry_run=False), on_batch=progress_reporter(False, every_s=0))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert [line.split(";")[0].split(" in ")[0] for line in lines] == ["batch 1: 2 rows", "batch 2: 2 rows", "batch 3: 1 row"]
    assert [line.split("; ")[1].split(",")[0] for line in lines] == ["2/5 (40%)", "4/5 (80%)", "5/5 (100%)"]
    assert all(re.search(r"[\d,]+ rows/s, ~\d+ s left$", line) for line in lines)


def test_progress_bar_follows_the_sweep(conn: psycopg.Connection) -> None:
    for i in range(5):
        insert(conn, status="queued", age_days=10 + i)
    bar = ProgressBar()
    result = sweep(conn, Target(), options(batch_size=2, dry_run=False), on_batch=bar)
    bar.finish(result)
    assert (bar.bar.value, bar.bar.max) == (5, 5)
    assert re.fullmatch(r"5 of 5 rows \(100%\) · 3 batches · [\d,]+ rows/s · stopped: done", bar.label.value)
    assert bar.bar.bar_style == "success"


def test_interactive_reporter_shows_nothing_for_a_dry_run(conn: psycopg.Connection, capsys: pytest.CaptureFixture[str]) -> None:
    insert(conn, status="queued", age_days=10)
    result = sweep(conn, Target(), options(), on_batch=progress_reporter(True))
    assert result.dry_run and capsys.readouterr().out == ""
