"""The catalogue of targets: each selects exactly the rows LiteLLM's own job would, the default
stays the rule it always was, an unknown name is refused naming the known ones, and a run of one
target is never resumed as another."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from runbook import ParameterError, Target, inspect, options, preview, sweep, undo
from runbook.rules.params import check_parameters
from runbook.rules.targets import CATALOGUE, target_named
from runbook.tools.runner import execute
from tests.rows import TABLE, db_now, insert, state, statuses
from tests.runs import LIVE

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ("completed", "complete", "failed", "expired", "cancelled", "stale_expired")

# LiteLLM's give-up rule for batch jobs (litellm-enterprise 0.1.83, CheckBatchCost): a job
# older than GIVE_UP_POLLING_AFTER, unprocessed and not terminal, set stale_expired one at a
# time; here as one statement over all of them, its cutoff bound as timestamptz like LiteLLM's.
BATCH_GIVE_UP_SQL = f"""
SELECT id FROM {TABLE}
WHERE file_purpose = 'batch' AND batch_processed = false
  AND status NOT IN ('completed', 'complete', 'failed', 'expired', 'cancelled', 'stale_expired')
  AND created_at < %s::timestamptz
"""


def _batch_mix(conn: psycopg.Connection) -> dict[str, str]:
    """Batch jobs and responses of every kind the give-up rule must tell apart."""
    rows = {
        "queued_old": insert(conn, status="validating", age_days=20, purpose="batch"),
        "in_progress_old": insert(conn, status="in_progress", age_days=15, purpose="batch"),
        "finalizing_just_old": insert(conn, status="finalizing", age_days=14 + 1 / 24, purpose="batch"),
        "in_progress_just_young": insert(conn, status="in_progress", age_days=14 - 1 / 24, purpose="batch"),
        "processed_old": insert(conn, status="in_progress", age_days=30, purpose="batch"),
        "completed_old": insert(conn, status="completed", age_days=30, purpose="batch"),
        "null_old": insert(conn, status=None, age_days=30, purpose="batch"),
        "response_old": insert(conn, status="queued", age_days=30, purpose="response"),
        "fine_tune_old": insert(conn, status="running", age_days=30, purpose="fine-tune"),
        "hostile_key": insert(conn, status="validating", age_days=16, purpose="batch", id="b'; DROP TABLE x; --\u00e9"),
    }
    conn.execute(f"UPDATE {TABLE} SET batch_processed = true WHERE id = %s", [rows["processed_old"]])
    return rows


def _litellm_gives_up(dsn: str, days: float) -> set[str]:
    """The ids LiteLLM's give-up rule selects, asked in a UTC session as LiteLLM means it."""
    with psycopg.connect(dsn, autocommit=True, options="-c TimeZone=UTC") as utc:
        cutoff = (db_now(utc) - timedelta(days=days)).replace(tzinfo=timezone.utc)
        return {str(r[0]) for r in utc.execute(BATCH_GIVE_UP_SQL, [cutoff])}


def test_the_catalogue_lists_every_target_with_its_table_rule_action_litellm_job_and_index() -> None:
    done = subprocess.run([sys.executable, "-m", "runbook", "targets"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    blocks = done.stdout.split("\n" + "stale_batches\n")
    assert blocks[0].startswith("stale_responses\n") and len(blocks) == 2
    blocks[1] = blocks[1].split("\nspend_logs\n")[0]
    by_name = dict(re.findall(r"^(\w+)\n((?:  .*\n?)+)", done.stdout, re.M))
    for name, block in zip(("stale_responses", "stale_batches"), blocks):
        assert "table    public.LiteLLM_ManagedObjectTable" in block
        assert "action   mark stale_expired" in block
        assert "LiteLLM  " in block and "index    " in block
    assert "batch_processed = false" in blocks[1] and "2 x MANAGED_OBJECT_STALENESS_CUTOFF_DAYS" in blocks[1]
    assert list(CATALOGUE) == [
        "stale_responses", "stale_batches", "spend_logs", "spend_log_tool_index", "health_checks", "audit_log",
        "error_logs", "spend_log_payloads",
    ]  # fmt: skip
    for name, table, action in [
        ("spend_logs", "LiteLLM_SpendLogs", "delete, archived first"),
        ("spend_log_tool_index", "LiteLLM_SpendLogToolIndex", "delete, archived first"),
        ("health_checks", "LiteLLM_HealthCheckTable", "delete, archived first"),
        ("audit_log", "LiteLLM_AuditLog", "delete, archived first"),
        ("error_logs", "LiteLLM_ErrorLogs", "delete, archived first"),
        ("spend_log_payloads", "LiteLLM_SpendLogs", "clear messages, response, proxy_server_request"),
    ]:
        assert f"table    public.{table}" in by_name[name] and f"action   {action}" in by_name[name], by_name[name]
    for never in ("audit_log", "error_logs", "spend_log_payloads"):
        assert "LiteLLM  none: LiteLLM never cleans this" in by_name[never]


def test_the_default_target_is_the_rule_it_always_was() -> None:
    assert target_named() == Target() == target_named("stale_responses")
    assert Target().describe() == {
        "schema": "public", "table": "public.LiteLLM_ManagedObjectTable", "purpose": "response",
        "terminal_statuses": list(TERMINAL), "new_status": "stale_expired",
    }  # fmt: skip
    assert target_named("stale_batches", "tenant2").schema == "tenant2"


@pytest.mark.parametrize("kind", ["inspect", "preview", "sweep", "undo", "index"])
def test_an_unknown_target_is_refused_naming_the_known_ones(kind: str) -> None:
    with pytest.raises(ParameterError) as err:
        check_parameters(kind, {"target": "stale_response"})
    assert err.value.name == "target" and err.value.value == "stale_response"
    assert "did you mean stale_responses?" in str(err.value)
    assert "one of the targets: stale_responses, stale_batches" in str(err.value)
    _, ids = check_parameters(kind, {})
    assert ids["target"] == "stale_responses"


def test_the_runner_refuses_an_unknown_target_before_anything_is_written(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    insert(conn, status="queued", age_days=10)
    before = state(conn)
    done = subprocess.run(
        [sys.executable, "-m", "runbook", "run", "sweep", "-p", "target", "spend_logz", "-p", "dry_run", "False",
         "--run-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env={"DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "parameter target='spend_logz' is not allowed" in done.stderr
    assert list(tmp_path.iterdir()) == []
    assert state(conn) == before


def test_stale_batches_changes_exactly_the_jobs_litellm_gives_up_on_in_bounded_batches(conn: psycopg.Connection, dsn: str) -> None:
    rows = _batch_mix(conn)
    expected = _litellm_gives_up(dsn, 14)
    assert expected == {rows[k] for k in ("queued_old", "in_progress_old", "finalizing_just_old", "hostile_key")}
    before = state(conn)
    target = target_named("stale_batches")
    # In a session whose TimeZone is not UTC, as LiteLLM's own cutoff would shift in.
    with psycopg.connect(dsn, autocommit=True, options="-c TimeZone=Asia/Kathmandu") as nepal:
        report = inspect(nepal, target, options(stale_after_days=14))
        assert report.candidates == len(expected)
        seen = preview(nepal, target, options(stale_after_days=14, batch_size=100))
        assert {r.id for r in seen.rows} == expected
        result = sweep(nepal, target, options(stale_after_days=14, batch_size=3, workers=1, **LIVE), run_id="batches-1")
    assert (result.stop_reason, result.changed) == ("done", len(expected))
    assert [b.changed for b in result.batches] == [3, 1]
    assert result.target["name"] == "stale_batches"
    after = state(conn)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == expected
    for key in changed:  # the status only
        assert after[key][9] == "stale_expired" and after[key][:9] + after[key][10:] == before[key][:9] + before[key][10:]
    assert conn.execute("SELECT count(*) FROM litellm_runbook.changes WHERE run_id = 'batches-1'").fetchone() == (4,)

    restored = undo(conn, Target(), options(**LIVE), of_run_id="batches-1", run_id="batches-undo")
    assert (restored.stop_reason, restored.restored) == ("done", 4)
    assert state(conn) == before


def test_a_run_of_one_target_is_not_resumed_as_another(conn: psycopg.Connection) -> None:
    rows = _batch_mix(conn)
    sweep(conn, Target(), options(max_batches=1, batch_size=1, workers=1, **LIVE), run_id="one-rule")
    before = statuses(conn)
    with pytest.raises(ParameterError, match=r"rule=None.*rule='stale_batches'"):
        sweep(conn, target_named("stale_batches"), options(batch_size=1, workers=1, **LIVE), run_id="one-rule")
    assert statuses(conn) == before
    assert before[rows["response_old"]] == "stale_expired"


def test_the_sweep_notebook_takes_its_target_as_a_parameter(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    rows = _batch_mix(conn)
    expected = _litellm_gives_up(dsn, 14)
    done = execute(
        "sweep", {"target": "stale_batches", "stale_after_days": 14, "dry_run": False, "run_id": "nb-batches"}, tmp_path,
        env={"DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.ok, done.error
    assert done.record is not None
    assert done.record["parameters"]["target"] == "stale_batches"
    assert done.record["target"]["name"] == "stale_batches"
    assert done.record["outcome"]["sweep"]["changed"] == len(expected)
    assert {k for k, v in statuses(conn).items() if v == "stale_expired"} == expected
    assert statuses(conn)[rows["completed_old"]] == "completed"


def test_the_demo_names_what_each_target_would_do_and_writes_nothing(conn: psycopg.Connection, dsn: str) -> None:
    from runbook import Database
    from runbook.tools.demo import what_targets_would_do

    _batch_mix(conn)  # one stale response; five unprocessed, non-terminal batch jobs older than 7 days
    insert(conn, status="queued", age_days=9)
    before = state(conn)
    assert what_targets_would_do(Database(dsn, "test")) == [
        "stale_responses  mark stale_expired: 2 row(s) of public.LiteLLM_ManagedObjectTable older than 7 days",
        "stale_batches    mark stale_expired: 5 row(s) of public.LiteLLM_ManagedObjectTable older than 7 days",
        "spend_logs       delete, archived first: 0 row(s) of public.LiteLLM_SpendLogs older than 7 days",
        "spend_log_tool_index delete, archived first: 0 row(s) of public.LiteLLM_SpendLogToolIndex older than 7 days",
        "health_checks    delete, archived first: 0 row(s) of public.LiteLLM_HealthCheckTable older than 7 days",
        "audit_log        delete, archived first: 0 row(s) of public.LiteLLM_AuditLog older than 7 days",
        "error_logs       delete, archived first: 0 row(s) of public.LiteLLM_ErrorLogs older than 7 days",
        "spend_log_payloads clear messages, response, proxy_server_request to '{}' (the spend row stays), previous "
        "values archived first: 0 row(s) of public.LiteLLM_SpendLogs older than 7 days",
    ]
    assert state(conn) == before
    assert conn.execute("SELECT to_regclass('litellm_runbook.runs')").fetchone() == (None,)  # not even a ledger


@pytest.mark.parametrize(("name", "per_hour"), [("stale_responses", 1000), ("stale_batches", 50)])
def test_inspect_of_every_target_sizes_the_table_and_compares_litellms_pace_with_the_sweeps(
    conn: psycopg.Connection, name: str, per_hour: int
) -> None:
    _batch_mix(conn)
    for i in range(6):
        insert(conn, status="queued", age_days=20 + i)
    target = target_named(name)
    first = inspect(conn, target, options(stale_after_days=14))
    assert first.candidates == {"stale_responses": 7, "stale_batches": 4}[name]
    assert first.table_bytes >= 8192 and first.toast_bytes >= 0
    assert first.litellm_hours == first.candidates / per_hour
    assert (first.measured_rows_per_s, first.sweep_seconds) == (None, None)  # no sweep measured yet, not even a ledger
    sweep(conn, target, options(stale_after_days=14, **LIVE))
    conn.execute(f"ANALYZE {TABLE}")
    conn.execute("SELECT pg_stat_force_next_flush()")
    insert(conn, status="queued", age_days=30, purpose={"stale_responses": "response", "stale_batches": "batch"}[name])
    again = inspect(conn, target, options(stale_after_days=14))
    assert again.candidates == 1 and again.litellm_hours == 1 / per_hour
    assert again.measured_rows_per_s is not None and again.measured_rows_per_s > 0
    assert again.sweep_seconds is not None and abs(again.sweep_seconds - 1 / again.measured_rows_per_s) <= 0.1
    assert again.dead_tuples >= first.candidates  # the sweep's old row versions, until VACUUM
    shown = {k: v for k, v in again.to_dict().items() if k in ("table_bytes", "dead_tuples", "litellm_hours")}
    assert set(shown) == {"table_bytes", "dead_tuples", "litellm_hours"}


def test_the_grants_of_a_target_let_its_sweeper_do_exactly_that_target(conn: psycopg.Connection, dsn: str) -> None:
    """``python -m runbook grants --target stale_batches``: the sweeper role may read the
    target's extra column and sweep it; with the default target's grants it may not."""
    from tests.roles import create_roles, drop_roles

    rows = _batch_mix(conn)
    expected = _litellm_gives_up(dsn, 14)
    roles = create_roles(conn, dsn)  # the default target's grants: no batch_processed
    try:
        before = state(conn)
        with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                sweep(c, target_named("stale_batches"), options(stale_after_days=14, **LIVE))
        assert state(conn) == before
    finally:
        drop_roles(conn)
    roles = create_roles(conn, dsn, target_named("stale_batches"))
    try:
        with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:
            result = sweep(c, target_named("stale_batches"), options(stale_after_days=14, **LIVE), run_id="granted")
        assert (result.stop_reason, result.changed) == ("done", len(expected))
        assert {k for k, v in statuses(conn).items() if v == "stale_expired"} == expected
        assert statuses(conn)[rows["response_old"]] == "queued"
    finally:
        drop_roles(conn)


def test_one_sweep_of_the_table_at_a_time_whatever_the_target(conn: psycopg.Connection, dsn: str) -> None:
    """Both targets are rules on LiteLLM_ManagedObjectTable: the table's lock is theirs too."""
    from runbook.db.lock import target_lock
    from runbook.errors import SweepInProgressError

    _batch_mix(conn)
    before = state(conn)
    with psycopg.connect(dsn, autocommit=True) as holder, target_lock(holder, Target()):
        with pytest.raises(SweepInProgressError, match="another sweep or undo of public.LiteLLM_ManagedObjectTable"):
            sweep(conn, target_named("stale_batches"), options(stale_after_days=14, **LIVE))
    assert state(conn) == before


def test_a_fingerprint_binds_the_target_not_only_the_ids() -> None:
    from datetime import datetime

    from runbook.ops.preview import fingerprint

    cutoff, ids = datetime(2026, 11, 1), ["a", "b"]
    assert fingerprint(Target().describe(), cutoff, ids) != fingerprint(target_named("stale_batches").describe(), cutoff, ids)
