"""The notebooks, run headless with papermill against a database the tests start."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import nbformat
import psycopg
import pytest
from psycopg import conninfo

from runbook.tools.runner import NOTEBOOK_DIR, NOTEBOOKS, execute
from tests.rows import insert, state, statuses

ROOT = NOTEBOOK_DIR.parent


def _env(dsn: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": dsn}


@pytest.mark.parametrize("stem", sorted(NOTEBOOKS.values()))
def test_notebook_is_committed_clean_with_one_typed_parameters_cell(stem: str) -> None:
    nb = nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    lines = [line for line in tagged[0].source.splitlines() if line.strip()]
    assert lines and all(": " in line.split("=")[0] and "  # " in line for line in lines), "name: type = value  # help"
    if stem not in ("05_create_index", "00_history"):
        assert "batch_size: int = 1000" in tagged[0].source
    if stem in ("01_inspect", "02_preview", "03_sweep"):
        assert "stale_after_days: float = 7" in tagged[0].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            assert len(cell.source.splitlines()) <= 12, "no code cell over 12 lines: logic lives in runbook/"
            if cell is not tagged[0] and not {"tuning", "health"} & set(cell.metadata.get("tags", [])):  # declarations, a line each
                statements = ast.parse(cell.source).body
                assert len(statements) <= 2, "cells stay short: logic lives in runbook/"
                assert not any(isinstance(s, (ast.For, ast.While, ast.FunctionDef, ast.If)) for s in statements)
    assert nb.cells[0].cell_type == "markdown" and "What it writes" in nb.cells[0].source


def test_sweep_notebook_defaults_to_dry_run() -> None:
    nb = nbformat.read(NOTEBOOK_DIR / "03_sweep.ipynb", as_version=4)
    source = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    for needed in ("dry_run: bool = True", "max_batches: int", "max_seconds: float"):
        assert needed in source


def test_three_notebooks_with_parameters(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    stale = [insert(conn, status="queued", age_days=8 + i) for i in range(5)]
    fresh = insert(conn, status="queued", age_days=1)

    inspected = execute("inspect", {"batch_size": 3, "run_id": "t-inspect"}, tmp_path, env=_env(dsn))
    assert inspected.ok, inspected.error
    assert inspected.record is not None
    assert inspected.record["outcome"]["inspect"]["candidates"] == 5
    assert inspected.record["outcome"]["inspect"]["batches_needed"] == 2
    assert inspected.record["run_id"] == "t-inspect"
    assert inspected.path.name.endswith("_01_inspect_t-inspect.ipynb")

    previewed = execute("preview", {"batch_size": 3}, tmp_path, env=_env(dsn))
    assert previewed.record is not None
    assert previewed.record["outcome"]["preview"]["ids"] == stale[::-1][:3]  # oldest first

    dry = execute("sweep", {"batch_size": 3}, tmp_path, env=_env(dsn))
    assert dry.ok and dry.record is not None and dry.record["outcome"]["sweep"]["stop_reason"] == "dry_run"
    assert set(statuses(conn).values()) == {"queued"}

    # The preview's cutoff, fixed: the fingerprint binds it, so the approved batch is the one swept.
    approved = previewed.record["outcome"]["preview"]
    live = execute(
        "sweep", {"batch_size": 3, "dry_run": False, "cutoff": approved["cutoff_utc"], "expect_fingerprint": approved["fingerprint"]},
        tmp_path, env=_env(dsn),
    )  # fmt: skip
    assert live.ok, live.error
    assert live.record is not None
    outcome = live.record["outcome"]["sweep"]
    assert [b["changed"] for b in outcome["batches"]] == [3, 2] and outcome["stop_reason"] == "done"
    assert statuses(conn) == {**{k: "stale_expired" for k in stale}, fresh: "queued"}
    assert outcome["first_batch_fingerprint"] == previewed.record["outcome"]["preview"]["fingerprint"]
    # the executed notebook is kept read-only with its checksum
    assert not os.access(live.path, os.W_OK) or os.geteuid() == 0
    assert oct(live.path.stat().st_mode)[-3:] == "444"
    assert (tmp_path / (live.path.name + ".sha256")).read_text().split()[0] == live.sha256


def test_inspect_and_preview_work_with_a_select_only_role(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    insert(conn, status="queued", age_days=10)
    conn.execute("DROP ROLE IF EXISTS runbook_ro")
    conn.execute("CREATE ROLE runbook_ro LOGIN")
    conn.execute('GRANT SELECT ON "LiteLLM_ManagedObjectTable" TO runbook_ro')
    try:
        ro = conninfo.make_conninfo(dsn, user="runbook_ro")
        for name in ("inspect", "preview"):
            done = execute(name, {}, tmp_path, env=_env(ro))
            assert done.ok, done.error
        assert done.record is not None and len(done.record["outcome"]["preview"]["ids"]) == 1
        before = state(conn)
        live = execute("sweep", {"dry_run": False}, tmp_path, env=_env(ro))
        assert not live.ok and live.error is not None
        assert live.error.startswith('ReadOnlyError: role runbook_ro may not UPDATE "public"."LiteLLM_ManagedObjectTable".status')
        assert live.record is not None and live.record["outcome"]["status"] == "failed"
        assert state(conn) == before
    finally:
        conn.execute('REVOKE ALL ON "LiteLLM_ManagedObjectTable" FROM runbook_ro')
        conn.execute("DROP OWNED BY runbook_ro")
        conn.execute("DROP ROLE runbook_ro")


def test_executed_notebook_holds_no_password(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    conn.execute("ALTER ROLE postgres PASSWORD 'sup3r-s3cret'")  # trust auth: the password is only carried
    try:
        url = conninfo.make_conninfo(dsn, password="sup3r-s3cret")
        done = execute("inspect", {}, tmp_path, env=_env(url))
        assert done.ok, done.error
        assert "sup3r-s3cret" not in done.path.read_text()
        assert "sup3r-s3cret" not in json.dumps(done.record)
    finally:
        conn.execute("ALTER ROLE postgres PASSWORD NULL")


def test_index_notebook_shows_then_builds_the_suggested_index(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    insert(conn, status="queued", age_days=10)
    before = state(conn)
    dry = execute("index", {}, tmp_path, env=_env(dsn))
    assert dry.ok and dry.record is not None
    shown = dry.record["outcome"]["index"]
    assert shown["statement"].startswith('CREATE INDEX CONCURRENTLY IF NOT EXISTS "LiteLLM_ManagedObjectTable_runbook_stale_idx"')
    assert not shown["created"] and conn.execute("SELECT to_regclass('\"LiteLLM_ManagedObjectTable_runbook_stale_idx\"')").fetchone() == (None,)
    built = execute("index", {"dry_run": False}, tmp_path, env=_env(dsn))
    assert built.ok, built.error
    assert built.record is not None and built.record["outcome"]["index"]["valid"] is True
    definition = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'LiteLLM_ManagedObjectTable_runbook_stale_idx'").fetchone()
    assert definition is not None and "WHERE ((file_purpose = 'response'::text) AND (status <> ALL" in definition[0]
    assert state(conn) == before  # building the index changes no row
