"""The sweep notebook's control panel in JupyterLab: Execute only after a confirmed preview of the
current settings, exactly the previewed rows, one run per Execute, Stop, and fields that are the
declared sweep parameters.

The panel is driven as JupyterLab would drive it, without a browser: widget values are
set and buttons clicked through ipywidgets' own API, and the database says what happened.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

import runbook.notebook.run as rb
from runbook.errors import ParameterError
from runbook.notebook.panel import FIELDS, SweepPanel, field, sweep_panel
from runbook.rules.params import declared
from tests.pictures import PNG_SIGNATURE
from tests.rows import SLOW_UPDATES, db_now, insert, state, statuses


@pytest.fixture
def run(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[rb.Run]:
    """A sweep notebook's Run on the test database, as its start cell builds it (defaults, dry run)."""
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setenv("RUNBOOK_SESSION", "demo")  # as `python -m runbook lab --demo` runs it; see the test of a real one
    started = rb.start("sweep", run_id="t-panel")
    yield started
    started.conn.close()


def five_stale_one_fresh(conn: psycopg.Connection) -> tuple[list[str], str]:
    """Five stale candidates (10..14 days old, oldest last) and one recent row."""
    stale = [insert(conn, status="queued", age_days=10 + i) for i in range(5)]
    return stale, insert(conn, status="queued", age_days=1)


def preview_ids(panel: SweepPanel) -> list[str]:
    """The ids in the panel's preview table, in displayed order."""
    return re.findall(r'<tr><td style="text-align:left">([^<]+)</td>', panel.preview_html.value)


def changed_ids(before: dict[str, str | None], after: dict[str, str | None]) -> set[str]:
    return {k for k in after if before.get(k) != after[k]}


def _ledger_ids(conn: psycopg.Connection, run_id: str) -> set[str]:
    rows = conn.execute("SELECT object_id FROM litellm_runbook.changes WHERE run_id = %s", [run_id]).fetchall()
    return {str(r[0]) for r in rows}


def test_controls_are_built_only_in_jupyterlab(run: rb.Run, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run.controls() is None  # papermill / nbval: no widget, nothing waits
    monkeypatch.setenv("JPY_SESSION_NAME", "03_sweep.ipynb")
    widget = run.controls()
    assert "runbook-panel" in widget._dom_classes


def test_execute_is_disabled_until_a_preview_of_the_current_settings_is_confirmed(
    run: rb.Run, conn: psycopg.Connection
) -> None:
    stale, _ = five_stale_one_fresh(conn)
    before = state(conn)
    panel = SweepPanel(run)
    assert panel.execute_button.disabled and panel.confirm.disabled

    panel.batch_size.value = 3
    panel.max_batches.value = 1
    panel.preview_button.click()
    assert preview_ids(panel) == stale[::-1][:3]  # oldest first
    assert "5 candidates older than" in panel.preview_html.value
    assert panel.shown is not None and panel.shown.report.fingerprint in panel.preview_html.value
    assert panel.execute_button.disabled, "a preview alone is not a confirmation"
    assert not panel.confirm.disabled

    panel.confirm.value = "4"
    assert panel.execute_button.disabled, "the wrong count does not confirm"
    panel.confirm.value = "5"
    assert not panel.execute_button.disabled

    panel.batch_size.value = 2
    assert panel.execute_button.disabled, "a settings change needs a new preview"
    assert panel.shown is None and panel.confirm.value == "" and panel.confirm.disabled
    assert "Settings changed since the preview" in panel.preview_html.value

    # click() reaches the callback even when the button is disabled: it must refuse by itself.
    panel.execute_button.click()
    assert "Execute refused" in panel.message.value
    assert state(conn) == before
    assert "sweep" not in run.outcome


def test_execute_changes_exactly_the_previewed_rows(run: rb.Run, conn: psycopg.Connection) -> None:
    stale, fresh = five_stale_one_fresh(conn)
    insert(conn, status="completed", age_days=30)
    insert(conn, status=None, age_days=30)
    before = statuses(conn)
    panel = SweepPanel(run)
    panel.batch_size.value = 3
    panel.max_batches.value = 1
    panel.preview_button.click()
    previewed = preview_ids(panel)
    assert len(previewed) == 3
    panel.confirm.value = "5"
    panel.execute_button.click()
    assert panel.wait(30) is not None

    after = statuses(conn)
    assert changed_ids(before, after) == set(previewed)
    assert {after[k] for k in previewed} == {"stale_expired"}
    assert after[fresh] == "queued" and [after[k] for k in stale[:2]] == ["queued", "queued"]

    sweep_out = run.outcome["sweep"]
    assert [b["changed"] for b in sweep_out["batches"]] == [3]
    assert sweep_out["stop_reason"] == "max_batches" and sweep_out["dry_run"] is False
    assert sweep_out["cutoff_utc"] == run.outcome["preview"]["cutoff_utc"], "the sweep used the preview's cutoff"
    assert sweep_out["options"]["expect_fingerprint"] == run.outcome["preview"]["fingerprint"]
    assert run.outcome["preview"]["ids"] == previewed
    assert "3 rows set to stale_expired in 1 batch," in panel.result_html.value
    assert "Stopped: max_batches" in panel.result_html.value
    assert bytes(panel.chart.value).startswith(PNG_SIGNATURE) and panel.chart.format == "png" and panel.chart.layout.display == ""
    assert panel.execute_button.disabled and panel.shown is None, "one preview, one Execute"

    [entry] = run.outcome["panel_runs"]
    assert entry["run_id"] != "t-panel" and entry["parameters"]["notebook_run_id"] == "t-panel"
    ledger = conn.execute(
        "SELECT object_id, previous_status, new_status FROM litellm_runbook.changes WHERE run_id = %s", [entry["run_id"]]
    ).fetchall()
    assert sorted(ledger) == sorted((k, "queued", "stale_expired") for k in previewed)

    record = run.finish()
    assert record["outcome"]["status"] == "succeeded" and record["outcome"]["sweep"]["changed"] == 3

    # A second Execute without a new preview changes nothing.
    panel.confirm.value = "5"
    panel.execute_button.click()
    panel.wait(30)
    assert statuses(conn) == after and "Execute refused" in panel.message.value


def test_each_execute_is_a_run_of_its_own_with_its_own_parameters(run: rb.Run, conn: psycopg.Connection) -> None:
    stale, _ = five_stale_one_fresh(conn)  # 10..14 days old
    panel = SweepPanel(run)
    panel.batch_size.value = 2
    panel.max_batches.value = 1
    panel.preview_button.click()
    first = panel.shown.report if panel.shown else None
    panel.confirm.value = "5"
    panel.execute_button.click()
    assert panel.wait(30) is not None
    panel.batch_size.value = 1
    panel.cutoff.value = (db_now(conn) - timedelta(days=11.5)).isoformat() + "Z"
    panel.preview_button.click()
    second = panel.shown.report if panel.shown else None
    panel.confirm.value = "1"  # 12 days old, not yet swept: stale[2]
    panel.execute_button.click()
    assert panel.wait(30) is not None
    assert first is not None and second is not None

    ids = [e["run_id"] for e in run.outcome["panel_runs"]]
    assert len(set(ids)) == 2 and "t-panel" not in ids
    rows = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT run_id, parameters->>'batch_size', parameters->>'cutoff', parameters->>'expect_fingerprint',"
            " parameters->>'notebook_run_id', rows_changed, identity->>'cutoff' FROM litellm_runbook.runs"
        )
    }
    assert rows == {
        ids[0]: ("2", first.cutoff_utc.isoformat() + "Z", first.fingerprint, "t-panel", 2, first.cutoff_utc.isoformat() + "Z"),
        ids[1]: ("1", second.cutoff_utc.isoformat() + "Z", second.fingerprint, "t-panel", 1, second.cutoff_utc.isoformat() + "Z"),
    }
    assert [(e["stop_reason"], e["changed"]) for e in run.outcome["panel_runs"]] == [("max_batches", 2), ("max_batches", 1)]
    assert _ledger_ids(conn, ids[0]) == set(stale[3:]) and _ledger_ids(conn, ids[1]) == {stale[2]}
    assert run.outcome["sweep"]["run_id"] == ids[1]


def test_execute_refuses_when_a_previewed_row_completed_meanwhile(run: rb.Run, conn: psycopg.Connection) -> None:
    five_stale_one_fresh(conn)
    panel = SweepPanel(run)
    panel.batch_size.value = 3
    panel.preview_button.click()
    previewed = preview_ids(panel)
    conn.execute('UPDATE "LiteLLM_ManagedObjectTable" SET status = %s WHERE id = %s', ["completed", previewed[0]])
    before = state(conn)
    panel.confirm.value = "5"
    panel.execute_button.click()
    assert panel.wait(30) is None

    assert state(conn) == before, "nothing written when the first batch is not the previewed one"
    assert "PreviewMismatchError" in panel.message.value
    assert run.outcome["status"] == "failed" and run.outcome["error"].startswith("PreviewMismatchError")
    assert not panel.running and panel.execute_button.disabled


def test_stop_ends_the_sweep_after_the_batch_in_flight(run: rb.Run, conn: psycopg.Connection) -> None:
    conn.execute(SLOW_UPDATES)
    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(30)]
    before = statuses(conn)
    panel = SweepPanel(run)
    panel.batch_size.value = 1
    panel.preview_button.click()
    panel.confirm.value = "30"
    panel.execute_button.click()
    # The callback returned at once; the sweep runs in its own thread.
    assert panel.running and not panel.stop_button.disabled
    assert panel.execute_button.disabled and panel.preview_button.disabled
    deadline = time.monotonic() + 20
    while list(statuses(conn).values()).count("stale_expired") < 2:
        assert time.monotonic() < deadline, "the sweep did not commit two batches in 20 s"
        time.sleep(0.02)
    panel.preview_button.click()
    assert "A sweep is running" in panel.message.value
    panel.stop_button.click()
    result = panel.wait(30)

    assert result is not None and result.stop_reason == "stop_requested"
    assert 2 <= result.changed < 30 and result.changed == len(result.batches)
    taken = set(ids[::-1][: result.changed])  # the oldest, one per batch
    assert changed_ids(before, statuses(conn)) == taken == _ledger_ids(conn, run.outcome["panel_runs"][0]["run_id"])
    assert run.outcome["sweep"]["stop_reason"] == "stop_requested"
    assert "Stopped: stop_requested" in panel.result_html.value
    assert panel.stop_button.disabled and not panel.preview_button.disabled and not panel.running


def test_bad_settings_show_the_parameter_error_and_write_nothing(run: rb.Run, conn: psycopg.Connection) -> None:
    five_stale_one_fresh(conn)
    before = state(conn)
    panel = SweepPanel(run)

    panel.batch_size.value = 0
    panel.preview_button.click()
    assert "parameter batch_size=0 is not allowed: an integer from 1 to 100_000" in panel.message.value
    assert panel.shown is None and panel.preview_html.value == ""
    assert panel.execute_button.disabled and panel.confirm.disabled
    panel.confirm.value = "5"
    panel.execute_button.click()
    assert state(conn) == before

    panel.batch_size.value = 3
    panel.cutoff.value = "yesterday"
    assert panel.message.value == "", "a settings change clears the old error"
    panel.preview_button.click()
    assert "parameter cutoff=&#x27;yesterday&#x27; is not allowed" in panel.message.value
    assert state(conn) == before and "sweep" not in run.outcome


def test_fixed_cutoff_replaces_stale_after_days(run: rb.Run, conn: psycopg.Connection) -> None:
    stale, _ = five_stale_one_fresh(conn)  # 10, 11, 12, 13, 14 days old
    before = statuses(conn)
    cutoff = (db_now(conn) - timedelta(days=11.5)).isoformat() + "Z"
    panel = SweepPanel(run)
    assert not panel.days.disabled
    panel.cutoff.value = cutoff
    assert panel.days.disabled
    panel.preview_button.click()
    assert preview_ids(panel) == [stale[4], stale[3], stale[2]]
    panel.confirm.value = "3"
    panel.execute_button.click()
    panel.wait(30)
    assert changed_ids(before, statuses(conn)) == set(stale[2:])
    assert run.outcome["sweep"]["stop_reason"] == "done" and run.outcome["sweep"]["changed"] == 3


def test_nothing_to_sweep_keeps_execute_disabled(run: rb.Run, conn: psycopg.Connection) -> None:
    insert(conn, status="queued", age_days=1)
    panel = SweepPanel(run)
    panel.preview_button.click()
    assert "No candidates older than" in panel.preview_html.value
    panel.confirm.value = "0"
    assert panel.execute_button.disabled and panel.confirm.disabled


def test_sweep_panel_returns_the_panel_widget(run: rb.Run) -> None:
    widget = sweep_panel(run)
    assert "runbook-panel" in widget._dom_classes
    texts = [c.description for box in widget.children for c in getattr(box, "children", [box]) if hasattr(c, "description")]
    assert {"stale after days", "fixed cutoff", "batch size", "max batches", "max seconds", "Preview", "Execute"} <= set(texts)


# -- the panel's fields come from the parameter declaration ------------------------------


def test_every_panel_field_is_a_declared_sweep_parameter_with_its_default_and_bounds(run: rb.Run) -> None:
    """Label, tooltip, bounds and default of each setting are the declaration's: a field
    that is not a sweep parameter, or shows another default or range, fails here."""
    sweep_parameters = declared("sweep")
    panel = SweepPanel(run)
    assert list(panel.fields) == list(FIELDS) and set(FIELDS) <= set(sweep_parameters)
    assert [panel.days, panel.cutoff, panel.batch_size, panel.max_batches, panel.max_seconds] == list(panel.fields.values())
    for name, widget in panel.fields.items():
        declared_as, spec = sweep_parameters[name], field(name)
        assert spec.parameter is declared_as
        assert widget.description == spec.label and widget.tooltip == spec.tooltip
        assert declared_as.help in spec.tooltip
        assert f"runbook-{name.replace('_', '-')}" in widget._dom_classes
        # The run was started with the defaults: each field shows the declared default.
        assert widget.value == (declared_as.default or "") and type(widget.value) is declared_as.type
        if declared_as.type is str:
            assert spec.low is None and spec.high is None
            continue
        assert spec.low is not None and spec.high is not None
        # The bounds are exactly what the declared check accepts.
        as_type = declared_as.type
        assert declared_as.check(name, as_type(spec.low)) == spec.low
        assert declared_as.check(name, as_type(spec.high)) == spec.high
        step = 1.0 if as_type is int else 0.0
        below = spec.low - step if step else math.nextafter(spec.low, -math.inf)
        above = spec.high + step if step else math.nextafter(spec.high, math.inf)
        for outside in (as_type(below), as_type(above)):
            with pytest.raises(ParameterError):
                declared_as.check(name, outside)
    # current_options() reads every field by its parameter name.
    panel.batch_size.value, panel.max_seconds.value = 7, 12.5
    assert (panel.current_options().batch_size, panel.current_options().max_seconds) == (7, 12.5)


def test_on_a_real_database_execute_also_wants_the_database_name_typed(
    dsn: str, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setenv("RUNBOOK_SESSION", "real")
    real = rb.start("sweep", run_id="t-panel-real")
    try:
        assert real.demo is False
        stale, _ = five_stale_one_fresh(conn)
        panel = SweepPanel(real)
        assert "NOT the demo" in panel.widget.children[0].value
        panel.preview_button.click()
        panel.confirm.value = "5"
        assert panel.execute_button.disabled  # the count alone is not enough
        panel.confirm_db.value = "postgres"
        assert panel.execute_button.disabled  # another database's name
        before = statuses(conn)
        panel.execute_button.click()  # a click on the disabled button changes nothing
        assert statuses(conn) == before and "the database name" in panel.message.value
        panel.preview_button.click()
        panel.confirm.value = "5"
        panel.confirm_db.value = conn.info.dbname
        assert not panel.execute_button.disabled
        panel.execute_button.click()
        panel.wait(60)
        assert {k for k, v in statuses(conn).items() if v == "stale_expired"} == set(stale)
    finally:
        real.conn.close()


def test_each_execute_in_jupyterlab_seals_a_copy_of_the_notebook_as_saved_beside_its_record(
    run: rb.Run, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import hashlib
    import stat

    notebook = tmp_path / "03_sweep.ipynb"
    notebook.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JPY_SESSION_NAME", "session/03_sweep.ipynb")
    monkeypatch.setenv("RUNBOOK_RUN_DIR", str(tmp_path / "runs"))
    five_stale_one_fresh(conn)
    panel = SweepPanel(run)
    panel.preview_button.click()
    panel.confirm.value = "5"
    panel.execute_button.click()
    panel.wait(60)
    (copy,) = (tmp_path / "runs").glob("*_03_sweep_*.ipynb")
    assert copy.read_bytes() == notebook.read_bytes() and stat.S_IMODE(copy.stat().st_mode) == 0o444
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    assert (copy.parent / (copy.name + ".sha256")).read_text().split()[0] == digest
    run_id = copy.stem.split("_03_sweep_")[1]
    assert conn.execute(
        "SELECT sha256 FROM litellm_runbook.records WHERE run_id = %s AND record_file = %s", [run_id, copy.name]
    ).fetchone() == (digest,)
