"""Delete and clear targets: exactly the rows LiteLLM's own statement selects, archived before
they go, in bounded batches, nothing else touched; undo gives the table back, row for row and
column for column; a damaged archive is refused; a batch killed between its archive and its
commit deletes nothing."""

from __future__ import annotations

import gzip
import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from runbook import ArchiveError, options, preview, sweep, undo
from runbook.rules.targets import target_named
from tests.retention import TABLES, fill, litellm_deletes, snapshot
from tests.rows import db_now
from tests.runs import LIVE

DELETE_TARGETS = {
    "spend_logs": "LiteLLM_SpendLogs",
    "spend_log_tool_index": "LiteLLM_SpendLogToolIndex",
    "health_checks": "LiteLLM_HealthCheckTable",
    "audit_log": "LiteLLM_AuditLog",
    "error_logs": "LiteLLM_ErrorLogs",
}


def _cutoff(conn: psycopg.Connection) -> datetime:
    return (db_now(conn) - timedelta(days=30)).replace(microsecond=0)


def _fill_all(conn: psycopg.Connection, cutoff: datetime) -> None:
    for table in TABLES:
        fill(conn, table, cutoff)


def _batches(conn: psycopg.Connection, run_id: str) -> list[tuple[int, int, str | None, str | None]]:
    return conn.execute(
        "SELECT batch, rows_changed, archive_file, archive_sha256 FROM litellm_runbook.batches WHERE run_id = %s ORDER BY batch",
        [run_id],
    ).fetchall()


@pytest.mark.parametrize("name", list(DELETE_TARGETS))
def test_a_delete_target_removes_exactly_litellms_rows_archived_in_bounded_batches_and_undo_gives_them_back(
    name: str, conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    table = DELETE_TARGETS[name]
    cutoff = _cutoff(conn)
    _fill_all(conn, cutoff)
    # A database whose TimeZone is not UTC: LiteLLM's own cutoff would shift by 5.5 hours here.
    conn.execute(f"ALTER DATABASE {psycopg.conninfo.conninfo_to_dict(dsn)['dbname']} SET TimeZone = 'Asia/Kolkata'")
    expected = litellm_deletes(dsn, table, cutoff)
    before = snapshot(conn)
    assert 0 < len(expected) < len(before[table])

    target = target_named(name)
    archive = tmp_path / "archive"
    opts = options(cutoff=cutoff.isoformat() + "Z", batch_size=7, workers=2, archive_dir=str(archive), **LIVE)
    with psycopg.connect(dsn, autocommit=True) as c:
        result = sweep(c, target, opts, run_id=f"del-{name}"[:36])
    after = snapshot(conn)

    assert result.stop_reason == "done" and result.changed == len(expected)
    assert set(before[table]) - set(after[table]) == expected  # exactly LiteLLM's rows, whatever the TimeZone
    assert set(after[table]) <= set(before[table])
    assert {t: rows for t, rows in after.items() if t != table} == {t: rows for t, rows in before.items() if t != table}
    batches = _batches(conn, result.run_id or "")
    assert all(0 < b[1] <= 7 for b in batches) and sum(b[1] for b in batches) == len(expected)
    archived: list[dict[str, object]] = []
    for _, rows, file, sha in batches:  # every deleted row is in the archive file its batch names
        assert file and sha
        lines = gzip.decompress((archive / file).read_bytes()).decode().splitlines()
        assert len(lines) == rows
        archived += [json.loads(line) for line in lines]
    assert len(archived) == len(expected)
    assert (os.stat(archive / str(batches[0][2])).st_mode & 0o777) == 0o400  # read-only, the operator's alone

    with psycopg.connect(dsn, autocommit=True) as c:
        dry = undo(c, target, options(archive_dir=str(archive)), of_run_id=result.run_id or "")
        assert dry.restorable == len(expected) and snapshot(conn) == after
        back = undo(c, target, options(batch_size=5, archive_dir=str(archive), **LIVE), of_run_id=result.run_id or "")
    assert back.restored == len(expected) and back.changed_since == 0
    assert snapshot(conn) == before  # row for row, column for column: SQL NULLs, JSON nulls and floats included


def test_clear_empties_exactly_the_stale_payloads_keeps_the_spend_rows_and_undo_puts_them_back(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    cutoff = _cutoff(conn)
    _fill_all(conn, cutoff)
    before = snapshot(conn)
    payloads = ("messages", "response", "proxy_server_request")
    rows = {
        r[0]: r[1:]
        for r in conn.execute('SELECT request_id, "startTime", messages, response, proxy_server_request FROM "LiteLLM_SpendLogs"')
    }
    # Not empty: anything but SQL NULL and LiteLLM's '{}' (a JSON null is something: it is cleared too).
    expected = {
        r[0] for r in conn.execute(
            'SELECT request_id FROM "LiteLLM_SpendLogs" WHERE "startTime" < %s AND ('
            + " OR ".join(f"{c} <> '{{}}'::jsonb" for c in payloads) + ")", [cutoff])
    }  # fmt: skip
    assert expected
    target = target_named("spend_log_payloads")
    archive = tmp_path / "archive"
    opts = options(cutoff=cutoff.isoformat() + "Z", batch_size=4, archive_dir=str(archive), **LIVE)
    with psycopg.connect(dsn, autocommit=True) as c:
        result = sweep(c, target, opts, run_id="clear-1")
    assert result.changed == len(expected)
    now = {
        r[0]: r[1:]
        for r in conn.execute('SELECT request_id, "startTime", messages, response, proxy_server_request FROM "LiteLLM_SpendLogs"')
    }
    assert now.keys() == rows.keys()  # every spend row stays
    sql_nulls = {
        (r[0], c) for c in payloads for r in conn.execute(f'SELECT request_id FROM "LiteLLM_SpendLogs" WHERE {c} IS NULL')
    }
    for k, (t, *p) in now.items():
        if k in expected:  # emptied to '{}', and a SQL NULL stays NULL
            assert p == [None if (k, c) in sql_nulls else {} for c in payloads], k
        else:
            assert [t, *p] == list(rows[k]), k
    after = snapshot(conn)
    assert {t: r for t, r in after.items() if t != "LiteLLM_SpendLogs"} == {
        t: r for t, r in before.items() if t != "LiteLLM_SpendLogs"
    }
    assert all(0 < b[1] <= 4 for b in _batches(conn, "clear-1"))

    # A payload written again since the clear is left alone; the others come back.
    changed = sorted(expected)[0]
    conn.execute("UPDATE \"LiteLLM_SpendLogs\" SET response = '{\"new\": 1}' WHERE request_id = %s", [changed])
    with psycopg.connect(dsn, autocommit=True) as c:
        back = undo(c, target, options(archive_dir=str(archive), **LIVE), of_run_id="clear-1")
    assert back.restored == len(expected)  # the row's other payload columns were still empty: restored
    kept = conn.execute('SELECT response FROM "LiteLLM_SpendLogs" WHERE request_id = %s', [changed]).fetchone()
    assert kept == ({"new": 1},)  # written since the clear: left alone
    conn.execute("UPDATE \"LiteLLM_SpendLogs\" SET response = %s WHERE request_id = %s", [
        psycopg.types.json.Jsonb(rows[changed][2]) if rows[changed][2] is not None else None, changed])
    assert snapshot(conn) == before


def test_an_archive_file_changed_after_the_fact_is_refused_and_nothing_is_restored(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    cutoff = _cutoff(conn)
    fill(conn, "LiteLLM_AuditLog", cutoff)
    archive = tmp_path / "archive"
    with psycopg.connect(dsn, autocommit=True) as c:
        result = sweep(c, target_named("audit_log"), options(cutoff=cutoff.isoformat() + "Z", batch_size=10,
                                                             archive_dir=str(archive), **LIVE), run_id="audit-1")
    assert result.changed > 10
    after = snapshot(conn)
    files = sorted(archive.glob("audit-1/*.jsonl.gz"))
    damaged = files[-1]
    original = damaged.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01  # one bit
    damaged.chmod(0o600)
    damaged.write_bytes(bytes(data))
    for dry in (True, False):
        with psycopg.connect(dsn, autocommit=True) as c, pytest.raises(ArchiveError, match=r"sha256 .* but its batch committed"):
            undo(c, target_named("audit_log"), options(archive_dir=str(archive), dry_run=dry), of_run_id="audit-1")
    damaged.write_bytes(original)
    files[0].unlink()
    with psycopg.connect(dsn, autocommit=True) as c, pytest.raises(ArchiveError, match="cannot be read"):
        undo(c, target_named("audit_log"), options(archive_dir=str(archive), **LIVE), of_run_id="audit-1")
    assert snapshot(conn) == after  # nothing restored


def test_delete_without_an_archive_must_be_asked_for_is_recorded_and_cannot_be_undone(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    cutoff = _cutoff(conn)
    fill(conn, "LiteLLM_ErrorLogs", cutoff)
    with psycopg.connect(dsn, autocommit=True) as c:
        result = sweep(c, target_named("error_logs"), options(cutoff=cutoff.isoformat() + "Z", archive=False, **LIVE),
                       run_id="noarchive")  # fmt: skip
        assert result.changed > 0 and result.archive_dir is None and result.options["archive"] is False
        assert all(b[2] is None for b in _batches(conn, "noarchive"))
        recorded = conn.execute("SELECT parameters->>'archive' FROM litellm_runbook.runs WHERE run_id = 'noarchive'").fetchone()
        assert recorded == ("false",)
        with pytest.raises(ArchiveError, match=r"without an archive \(archive=False\)"):
            undo(c, target_named("error_logs"), options(**LIVE), of_run_id="noarchive")
    assert options().archive is True


def test_preview_of_a_delete_target_is_exactly_the_next_batch_in_sweep_order(conn: psycopg.Connection, dsn: str) -> None:
    cutoff = _cutoff(conn)
    fill(conn, "LiteLLM_SpendLogToolIndex", cutoff)
    target = target_named("spend_log_tool_index")
    opts = options(cutoff=cutoff.isoformat() + "Z", batch_size=5)
    total = conn.execute('SELECT count(*) FROM "LiteLLM_SpendLogToolIndex"').fetchone()[0]  # type: ignore[index]
    with psycopg.connect(dsn, autocommit=True) as c:
        shown = preview(c, target, opts)
        result = sweep(c, target, options(cutoff=cutoff.isoformat() + "Z", batch_size=5, workers=1, max_batches=1,
                                          expect_fingerprint=shown.fingerprint, **LIVE), run_id="tools-1")  # fmt: skip
    assert result.first_batch_fingerprint == shown.fingerprint
    remaining = {tuple(r) for r in conn.execute('SELECT request_id, tool_name FROM "LiteLLM_SpendLogToolIndex"')}
    previewed = [tuple(json.loads(r.id)) for r in shown.rows]
    assert len(previewed) == 5 and not (set(previewed) & remaining) and len(remaining) == total - 5
    times = [r.created_at for r in shown.rows]
    assert times == sorted(times) and all(t < cutoff for t in times)


KILLED_SWEEP = """
import sys, psycopg
from runbook import options, sweep
from runbook.rules.targets import target_named
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    sweep(c, target_named("spend_logs"), options(cutoff=sys.argv[2], batch_size=5, workers=1, lock_timeout_s=120,
          archive_dir=sys.argv[3], dry_run=False), run_id="killed")
"""


def test_a_sweep_killed_between_its_archive_and_its_commit_deletes_nothing_and_its_file_is_never_restored(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys
    import time

    cutoff = _cutoff(conn)
    fill(conn, "LiteLLM_SpendLogs", cutoff)
    conn.execute("CREATE SCHEMA IF NOT EXISTS litellm_runbook")
    with psycopg.connect(dsn, autocommit=True) as c:  # the ledger exists, so its batches table can be locked
        sweep(c, target_named("spend_logs"), options(cutoff=(cutoff - timedelta(days=3650)).isoformat() + "Z", **LIVE))
    before = snapshot(conn)
    archive = tmp_path / "archive"
    with psycopg.connect(dsn) as locker:
        # The batch's archive is written; its DELETE and ledger row then wait for this lock.
        locker.execute("LOCK TABLE litellm_runbook.batches IN EXCLUSIVE MODE")
        child = subprocess.Popen([sys.executable, "-c", KILLED_SWEEP, dsn, cutoff.isoformat() + "Z", str(archive)],
                                 cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
        deadline = time.monotonic() + 60
        while not list(archive.glob("killed/*.jsonl.gz")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(archive.glob("killed/*.jsonl.gz")), "the batch never wrote its archive"
        while time.monotonic() < deadline and not conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]:  # type: ignore[index]
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)  # kill -9 between the archive and the commit
        child.wait(30)
        locker.rollback()
    deadline = time.monotonic() + 30
    others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    while conn.execute(others).fetchone()[0]:  # type: ignore[index]
        assert time.monotonic() < deadline, "the killed sweep's session never ended"
        time.sleep(0.05)
    assert snapshot(conn)["LiteLLM_SpendLogs"] == before["LiteLLM_SpendLogs"]  # nothing deleted
    assert _batches(conn, "killed") == []  # no committed batch names the file
    orphan = list(archive.glob("killed/*.jsonl.gz"))
    assert len(orphan) == 1
    with psycopg.connect(dsn, autocommit=True) as c:
        undone = undo(c, target_named("spend_logs"), options(archive_dir=str(archive), **LIVE), of_run_id="killed")
    assert undone.restored == 0 and undone.rows_in_ledger == 0  # the orphan file is never read
    assert snapshot(conn) == before


def test_a_role_granted_one_delete_target_cannot_delete_from_another_table_through_the_runbook(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    """``python -m runbook grants --target spend_logs``: its sweeper deletes and restores spend logs,
    and is refused (before anything is written) on the audit log and on the spend logs' payloads."""
    from runbook import ReadOnlyError
    from tests.roles import create_roles, drop_roles

    cutoff = _cutoff(conn)
    _fill_all(conn, cutoff)
    expected = litellm_deletes(dsn, "LiteLLM_SpendLogs", cutoff)
    before = snapshot(conn)
    roles = create_roles(conn, dsn, target_named("spend_logs"))
    opts = options(cutoff=cutoff.isoformat() + "Z", archive_dir=str(tmp_path / "archive"), allow_blind_health=True, **LIVE)
    try:
        with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:
            for other, refusal in (("audit_log", "may not (SELECT|DELETE)"), ("spend_log_payloads", "may not UPDATE")):
                with pytest.raises(ReadOnlyError, match=refusal):
                    sweep(c, target_named(other), opts)
            assert snapshot(conn) == before
            result = sweep(c, target_named("spend_logs"), opts, run_id="granted-spend")
            assert result.changed == len(expected)
            assert set(before["LiteLLM_SpendLogs"]) - set(snapshot(conn)["LiteLLM_SpendLogs"]) == expected
            undo(c, target_named("spend_logs"), opts, of_run_id="granted-spend")
        assert snapshot(conn) == before
        with psycopg.connect(roles["rb_reader"], autocommit=True) as c:  # the reader previews, never reads payloads
            shown = preview(c, target_named("spend_logs"), options(cutoff=cutoff.isoformat() + "Z"))
            assert shown.rows and shown.archive_bytes is None
            with pytest.raises(ReadOnlyError, match="may not"):
                sweep(c, target_named("spend_logs"), opts)
    finally:
        drop_roles(conn)
    assert snapshot(conn)["LiteLLM_SpendLogs"] == before["LiteLLM_SpendLogs"]


def test_inspect_of_a_delete_and_a_clear_target_says_what_the_sweep_frees_and_whether_litellm_ever_would(
    conn: psycopg.Connection, dsn: str
) -> None:
    from runbook import inspect

    cutoff = _cutoff(conn)
    _fill_all(conn, cutoff)
    conn.execute("ANALYZE")
    opts = options(cutoff=cutoff.isoformat() + "Z")
    with psycopg.connect(dsn, autocommit=True) as c:
        spend = inspect(c, target_named("spend_logs"), opts)
        audit = inspect(c, target_named("audit_log"), opts)
        payloads = inspect(c, target_named("spend_log_payloads"), opts)
    assert spend.candidates == len(litellm_deletes(dsn, "LiteLLM_SpendLogs", cutoff))
    assert spend.litellm_cleans and spend.litellm_hours == spend.candidates / (500 * 1000 // 24)
    assert not spend.full_scan and not any("No index" in w for w in spend.warnings)  # its index on "startTime"
    assert not audit.litellm_cleans and audit.litellm_hours is None
    assert audit.full_scan and any('No index of LiteLLM_AuditLog leads with updated_at' in w for w in audit.warnings)
    assert 0 < spend.frees_bytes <= spend.table_bytes + spend.toast_bytes and spend.estimated_wal_bytes > 0
    assert 0 < payloads.frees_bytes < spend.frees_bytes and not payloads.litellm_cleans
    assert spend.by_status == [] or {c.label for c in spend.by_status} == {"NULL"}  # no status rule


def test_the_notebooks_delete_with_target_and_undo_needs_only_the_run_id(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    from runbook.tools.runner import execute

    cutoff = _cutoff(conn)
    _fill_all(conn, cutoff)
    expected = litellm_deletes(dsn, "LiteLLM_HealthCheckTable", cutoff)
    before = snapshot(conn)
    env = {"DATABASE_URL": dsn, "PATH": "/usr/bin:/bin", "RUNBOOK_ARCHIVE_DIR": str(tmp_path / "archive")}
    swept = execute("sweep", {"target": "health_checks", "cutoff": cutoff.isoformat() + "Z", "batch_size": 9,
                              "dry_run": False, "run_id": "nb-health"}, tmp_path, env=env)  # fmt: skip
    assert swept.ok, swept.error
    assert swept.record is not None and swept.record["outcome"]["sweep"]["changed"] == len(expected)
    assert swept.record["outcome"]["sweep"]["archive_dir"] == str(tmp_path / "archive")
    assert set(before["LiteLLM_HealthCheckTable"]) - set(snapshot(conn)["LiteLLM_HealthCheckTable"]) == expected
    undone = execute("undo", {"run_id": "nb-health", "dry_run": False}, tmp_path, env=env)  # no target: the ledger's
    assert undone.ok, undone.error
    assert snapshot(conn) == before


def test_undo_leaves_a_row_whose_key_exists_again_alone_and_counts_it(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    cutoff = _cutoff(conn)
    fill(conn, "LiteLLM_ErrorLogs", cutoff)
    before = snapshot(conn)
    archive = str(tmp_path / "archive")
    with psycopg.connect(dsn, autocommit=True) as c:
        result = sweep(c, target_named("error_logs"), options(cutoff=cutoff.isoformat() + "Z", archive_dir=archive, **LIVE),
                       run_id="errors-1")  # fmt: skip
        again = conn.execute('SELECT request_id FROM "LiteLLM_ErrorLogs" ORDER BY 1 LIMIT 0').fetchall()
        gone = sorted(set(before["LiteLLM_ErrorLogs"]) - set(snapshot(conn)["LiteLLM_ErrorLogs"]))[0]
        key = gone.split(",")[0].lstrip("(").strip('"')
        # LiteLLM logs a new error under a key the sweep deleted: undo must not overwrite it.
        conn.execute("INSERT INTO \"LiteLLM_ErrorLogs\" (request_id, \"startTime\", \"endTime\", exception_string) "
                     "VALUES (%s, now(), now(), 'new')", [key])  # fmt: skip
        dry = undo(c, target_named("error_logs"), options(archive_dir=archive), of_run_id="errors-1")
        assert (dry.restorable, dry.changed_since) == (result.changed - 1, 1)
        back = undo(c, target_named("error_logs"), options(archive_dir=archive, **LIVE), of_run_id="errors-1")
    assert not again
    assert (back.restored, back.changed_since) == (result.changed - 1, 1)
    now = snapshot(conn)["LiteLLM_ErrorLogs"]
    assert gone not in now and set(now) - set(before["LiteLLM_ErrorLogs"]) == {r for r in now if ",new," in r}
    assert len(now) == len(before["LiteLLM_ErrorLogs"])


def test_vacuum_is_offered_never_run_by_default_and_skipped_with_a_warning_when_the_role_may_not(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    from tests.roles import create_roles, drop_roles

    cutoff = _cutoff(conn)
    fill(conn, "LiteLLM_AuditLog", cutoff)
    roles = create_roles(conn, dsn, target_named("audit_log"))
    opts = {"cutoff": cutoff.isoformat() + "Z", "archive_dir": str(tmp_path / "archive"), "batch_size": 10, **LIVE}
    try:
        with psycopg.connect(dsn, autocommit=True) as c:  # the table's owner
            plain = sweep(c, target_named("audit_log"), options(**opts), run_id="no-vacuum")
            assert plain.changed > 0 and plain.vacuum is None and plain.dead_tuples is not None
            fill(conn, "LiteLLM_AuditLog", cutoff - timedelta(days=100), prefix="2nd ")
            vacuumed = sweep(c, target_named("audit_log"), options(vacuum=True, **opts), run_id="vacuum")
        assert vacuumed.changed > 0 and vacuumed.vacuum is not None and "seconds" in vacuumed.vacuum
        last = conn.execute("SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'LiteLLM_AuditLog'").fetchone()
        assert last is not None and last[0] is not None  # VACUUM ran
        assert (tmp_path / "archive" / "vacuum").stat().st_mode & 0o777 == 0o700
        fill(conn, "LiteLLM_AuditLog", cutoff - timedelta(days=200), prefix="3rd ")
        with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:
            skipped = sweep(c, target_named("audit_log"), options(vacuum=True, allow_blind_health=True, **opts))
        assert skipped.changed > 0 and skipped.vacuum is not None and "does not own the table" in skipped.vacuum["error"]
        assert any("vacuum=True: not run" in w for w in skipped.warnings)
    finally:
        drop_roles(conn)


def test_one_sweep_of_spend_logs_at_a_time_whether_it_deletes_or_clears(conn: psycopg.Connection, dsn: str) -> None:
    from runbook.db.lock import target_lock
    from runbook.errors import SweepInProgressError

    cutoff = _cutoff(conn)
    fill(conn, "LiteLLM_SpendLogs", cutoff)
    before = snapshot(conn)
    with psycopg.connect(dsn, autocommit=True) as holder, target_lock(holder, target_named("spend_logs")):
        with pytest.raises(SweepInProgressError, match="another sweep or undo of public.LiteLLM_SpendLogs"):
            sweep(conn, target_named("spend_log_payloads"), options(cutoff=cutoff.isoformat() + "Z", **LIVE))
    assert snapshot(conn) == before


def test_a_table_with_child_tables_is_refused_before_anything_is_read_or_written(conn: psycopg.Connection, dsn: str) -> None:
    from runbook import TargetNotFoundError

    cutoff = _cutoff(conn)
    fill(conn, "LiteLLM_AuditLog", cutoff)
    conn.execute('CREATE TABLE audit_child (extra text) INHERITS ("LiteLLM_AuditLog")')
    before = snapshot(conn)
    with psycopg.connect(dsn, autocommit=True) as c, pytest.raises(TargetNotFoundError, match="child tables or partitions"):
        sweep(c, target_named("audit_log"), options(cutoff=cutoff.isoformat() + "Z", **LIVE))
    assert snapshot(conn) == before


def test_a_delete_run_is_undone_once_and_a_column_added_since_gets_its_default(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    from runbook import ParameterError, UnknownRunError

    cutoff = _cutoff(conn)
    fill(conn, "LiteLLM_ErrorLogs", cutoff)
    archive = str(tmp_path / "archive")
    opts = {"cutoff": cutoff.isoformat() + "Z", "archive_dir": archive, **LIVE}
    with psycopg.connect(dsn, autocommit=True) as c:
        first = sweep(c, target_named("error_logs"), options(max_batches=1, batch_size=5, **opts), run_id="once")
        with pytest.raises(ParameterError, match="archive"):  # resumed with another archive: refused
            sweep(c, target_named("error_logs"), options(**{**opts, "archive_dir": archive + "-2"}), run_id="once")
        assert first.changed == 5
        # A LiteLLM migration adds a column with a default between the delete and its undo.
        conn.execute('ALTER TABLE "LiteLLM_ErrorLogs" ADD COLUMN note text NOT NULL DEFAULT \'n/a\'')
        back = undo(c, target_named("error_logs"), options(archive_dir=archive, **LIVE), of_run_id="once")
        assert back.restored == 5
        assert conn.execute('SELECT count(*) FROM "LiteLLM_ErrorLogs" WHERE note <> \'n/a\'').fetchone() == (0,)
        again = sweep(c, target_named("error_logs"), options(**opts), run_id="later")
        assert again.changed > 5
        with pytest.raises(UnknownRunError, match="already undone by run"):
            undo(c, target_named("error_logs"), options(archive_dir=archive, **LIVE), of_run_id="once")


def test_an_archive_folder_others_may_write_into_is_refused_before_anything_is_deleted(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    cutoff = _cutoff(conn)
    fill(conn, "LiteLLM_AuditLog", cutoff)
    before = snapshot(conn)
    shared = tmp_path / "shared"
    (shared / "planted").mkdir(parents=True)
    (shared / "planted").chmod(0o777)  # a run folder another local user made ahead
    with psycopg.connect(dsn, autocommit=True) as c, pytest.raises(ArchiveError, match="others may write into it"):
        sweep(c, target_named("audit_log"), options(cutoff=cutoff.isoformat() + "Z", archive_dir=str(shared), **LIVE),
              run_id="planted")  # fmt: skip
    assert snapshot(conn) == before
    fresh = tmp_path / "new" / "archive"
    with psycopg.connect(dsn, autocommit=True) as c:
        sweep(c, target_named("audit_log"), options(cutoff=cutoff.isoformat() + "Z", archive_dir=str(fresh), **LIVE))
    assert all(oct(p.stat().st_mode)[-3:] == "700" for p in (fresh, fresh.parent))


def test_two_workers_writing_a_runs_first_files_at_once_both_succeed(tmp_path: Path) -> None:
    """Two batches of one round create the run's folder (and the archive's) at the same moment."""
    import threading

    from runbook.audit.archive import read_batch, write_batch

    for attempt in range(20):
        root = tmp_path / f"try{attempt}" / "archive"
        out: list[object] = []
        start = threading.Barrier(2)

        def write(batch: int, root: Path = root, out: list[object] = out, start: threading.Barrier = start) -> None:
            start.wait()
            out.append(write_batch(root, "run", batch, f'{{"n": {batch}}}', 1))

        threads = [threading.Thread(target=write, args=(b,)) for b in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(out) == 2, f"attempt {attempt}: a writer failed"
        for f in out:
            assert read_batch(root, f.name, f.sha256) == [f'{{"n": {f.name.split("-")[1].lstrip("0")}}}']  # type: ignore[attr-defined]
