"""The Prometheus metrics file each run writes; metrics are watchers, so a file that cannot be
written is a warning and never breaks, hides or leaves open the run."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from runbook import Target, options, sweep
from runbook.ops.undo import undo
from tests.rows import insert, statuses
from tests.runs import LIVE


def test_metrics_file(conn: psycopg.Connection, tmp_path: Path) -> None:
    for i in range(5):
        insert(conn, status="queued", age_days=10 + i)
    result = sweep(conn, Target(), options(batch_size=2, metrics_dir=str(tmp_path), **LIVE), run_id="metrics-1")
    text = (tmp_path / "litellm_runbook_metrics-1.prom").read_text()
    labels = '{run_id="metrics-1",kind="sweep",table="public.LiteLLM_ManagedObjectTable"}'
    assert f"litellm_runbook_rows_changed_total{labels} 5" in text
    assert f"litellm_runbook_rows_remaining{labels} 0" in text
    assert f"litellm_runbook_batches_total{labels} 3" in text
    assert 'litellm_runbook_run_outcome{run_id="metrics-1",kind="sweep",table="public.LiteLLM_ManagedObjectTable",outcome="done"} 1' in text
    assert result.metrics_file == str(tmp_path / "litellm_runbook_metrics-1.prom")


def test_a_metrics_file_that_cannot_be_written_is_a_warning_and_the_run_is_closed(
    conn: psycopg.Connection, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(3)]
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = sweep(conn, Target(), options(batch_size=2, metrics_dir=str(not_a_dir), **LIVE), run_id="no-metrics")
    assert (result.stop_reason, result.changed, result.metrics_file) == ("done", 3, None)
    assert len(result.warnings) == 1 and result.warnings[0].startswith(f"metrics file not written to metrics_dir='{not_a_dir}': ")
    warned = [r for r in caplog.records if "warning: metrics file not written" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING" and warned[0].name == "runbook.ops.live"
    assert set(statuses(conn).values()) == {"stale_expired"}
    row = conn.execute(
        "SELECT finished_at IS NOT NULL, stop_reason, rows_changed, jsonb_array_length(outcome->'warnings')"
        " FROM litellm_runbook.runs WHERE run_id = 'no-metrics'"
    ).fetchone()
    assert row == (True, "done", 3, 1)

    undone = undo(conn, Target(), options(metrics_dir=str(not_a_dir), **LIVE), of_run_id="no-metrics", run_id="undo-nm")
    assert (undone.stop_reason, undone.restored, len(undone.warnings)) == ("done", 3, 1)
    assert statuses(conn) == {k: "queued" for k in ids}
    row = conn.execute("SELECT finished_at IS NOT NULL, stop_reason, rows_changed FROM litellm_runbook.runs WHERE run_id = 'undo-nm'").fetchone()
    assert row == (True, "done", 3)


def test_a_failing_batch_with_failing_metrics_raises_its_own_error_and_closes_the_run(conn: psycopg.Connection, tmp_path: Path) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(4)]  # ids[0] oldest
    conn.execute(
        "CREATE FUNCTION refuse_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.id = '{ids[2]}' THEN RAISE EXCEPTION 'row % refused by a trigger', NEW.id; END IF; RETURN NEW; END $$"
    )
    conn.execute('CREATE TRIGGER refuse_row BEFORE UPDATE ON "LiteLLM_ManagedObjectTable" FOR EACH ROW EXECUTE FUNCTION refuse_row()')
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(psycopg.errors.RaiseException, match=f"row {ids[2]} refused by a trigger"):
        sweep(conn, Target(), options(batch_size=2, workers=1, metrics_dir=str(not_a_dir), **LIVE), run_id="fails")
    assert statuses(conn) == {**{k: "stale_expired" for k in ids[:2]}, **{k: "queued" for k in ids[2:]}}
    row = conn.execute(
        "SELECT finished_at IS NOT NULL, stop_reason, rows_changed, outcome->>'stop_detail', jsonb_array_length(outcome->'warnings')"
        " FROM litellm_runbook.runs WHERE run_id = 'fails'"
    ).fetchone()
    assert row is not None and row[:3] == (True, "failed", 2) and row[4] == 1
    assert str(row[3]) == f"RaiseException (P0001): row {ids[2]} refused by a trigger"  # its DETAIL never copied
