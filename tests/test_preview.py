"""An approved preview is what the sweep does: the preview is exactly the next batch, its
fingerprint binds the target, the rule, the cutoff and the ids, the preview prints what to pass
back, and a sweep given that fingerprint executes exactly those rows or nothing."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import psycopg
import pytest

from runbook import Target, options, preview, sweep
from runbook.errors import ParameterError, PreviewMismatchError
from runbook.notebook.render import show_preview
from runbook.ops.preview import fingerprint
from tests.rows import insert, state, statuses
from tests.runs import LIVE


def test_preview_is_exactly_the_next_batch(conn: psycopg.Connection) -> None:
    for i in range(10):
        insert(conn, status="queued", age_days=8 + (i % 4))  # ties in created_at, broken by id
    batch = preview(conn, Target(), options(batch_size=4))
    before = statuses(conn)
    sweep(conn, Target(), options(batch_size=4, max_batches=1, **LIVE))
    after = statuses(conn)
    assert {k for k in before if before[k] != after[k]} == {r.id for r in batch.rows}
    assert len(batch.rows) == 4


def test_the_preview_prints_the_cutoff_and_fingerprint_ready_to_pass_back(
    conn: psycopg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(3)]  # ids[0] oldest
    report = preview(conn, Target(), options(batch_size=2))
    show_preview(report)
    printed = re.search(r"To sweep exactly these rows: -p cutoff (\S+) -p batch_size (\d+) -p expect_fingerprint ([0-9a-f]{16})", capsys.readouterr().out)
    assert printed is not None and printed.group(3) == report.fingerprint and printed.group(2) == "2"
    assert report.cutoff_utc.microsecond == 0
    insert(conn, status="queued", age_days=20 - 2.5)  # newer than the batch: not in it, still a candidate
    done = sweep(
        conn, Target(), options(cutoff=printed.group(1), batch_size=int(printed.group(2)), expect_fingerprint=printed.group(3),
                                max_batches=1, workers=1, **LIVE),
    )  # fmt: skip
    assert done.changed == 2 and {k for k, v in statuses(conn).items() if v == "stale_expired"} == set(ids[:2])


def test_the_fingerprint_changes_with_each_thing_it_binds() -> None:
    target = Target().describe()
    cutoff = datetime(2026, 1, 1)
    base = fingerprint(target, cutoff, ["a", "b"])
    others = [
        fingerprint({**target, "table": "public.other"}, cutoff, ["a", "b"]),
        fingerprint({**target, "purpose": "batch"}, cutoff, ["a", "b"]),
        fingerprint({**target, "terminal_statuses": ["completed"]}, cutoff, ["a", "b"]),
        fingerprint(target, datetime(2026, 1, 1, 0, 0, 1), ["a", "b"]),
        fingerprint(target, cutoff, ["b", "a"]),
        fingerprint(target, cutoff, ["a"]),
    ]
    assert len({base, *others}) == 7 and all(re.fullmatch(r"[0-9a-f]{16}", f) for f in [base, *others])


def test_the_fingerprint_binds_the_cutoff_not_only_the_ids(conn: psycopg.Connection) -> None:
    old = [insert(conn, status="queued", age_days=40), insert(conn, status="queued", age_days=35)]
    recent = insert(conn, status="queued", age_days=10)  # a candidate at 1 day, not at 30
    approved = preview(conn, Target(), options(stale_after_days=30, batch_size=2))
    assert [r.id for r in approved.rows] == old and approved.candidates == 2
    assert re.fullmatch(r"[0-9a-f]{16}", approved.fingerprint)
    before = state(conn)
    # The sequence (-p stale_after_days 1 -p expect_fingerprint F) is refused as a parameter.
    with pytest.raises(ParameterError, match="expect_fingerprint"):
        options(stale_after_days=1, batch_size=2, expect_fingerprint=approved.fingerprint, **LIVE)
    one_day = (approved.cutoff_utc + timedelta(days=29)).isoformat() + "Z"  # the same rows 1-30 days old are in
    with pytest.raises(PreviewMismatchError) as err:
        sweep(conn, Target(), options(cutoff=one_day, batch_size=2, expect_fingerprint=approved.fingerprint, **LIVE))
    assert f"not the approved {approved.fingerprint}: the fingerprint binds the target, the rule, the cutoff" in str(err.value)
    assert state(conn) == before
    # With the preview's own cutoff the same fingerprint is accepted, and only the previewed rows change.
    cutoff = approved.cutoff_utc.isoformat() + "Z"
    done = sweep(conn, Target(), options(cutoff=cutoff, batch_size=2, expect_fingerprint=approved.fingerprint, **LIVE))
    assert done.first_batch_fingerprint == approved.fingerprint and done.changed == 2
    assert statuses(conn) == {old[0]: "stale_expired", old[1]: "stale_expired", recent: "queued"}


def test_approved_preview_is_executed_exactly_or_not_at_all(conn: psycopg.Connection) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(5)]
    approved = preview(conn, Target(), options(batch_size=2))
    cutoff = approved.cutoff_utc.isoformat() + "Z"
    insert(conn, status="queued", age_days=40)  # a new oldest row appears after the approval
    before = state(conn)
    with pytest.raises(PreviewMismatchError, match=f"not the approved {approved.fingerprint}"):
        sweep(conn, Target(), options(batch_size=2, cutoff=cutoff, expect_fingerprint=approved.fingerprint, **LIVE), run_id="mismatch")
    assert state(conn) == before
    refused = conn.execute(
        "SELECT stop_reason, finished_at IS NOT NULL, outcome->>'stop_detail' FROM litellm_runbook.runs WHERE run_id = 'mismatch'"
    ).fetchone()
    assert refused is not None and refused[:2] == ("failed", True) and "PreviewMismatchError" in refused[2]
    assert conn.execute("SELECT count(*) FROM litellm_runbook.batches WHERE run_id = 'mismatch'").fetchone() == (0,)
    conn.execute('DELETE FROM "LiteLLM_ManagedObjectTable" WHERE id <> ALL(%s)', [ids])
    result = sweep(conn, Target(), options(batch_size=2, max_batches=1, cutoff=cutoff, expect_fingerprint=approved.fingerprint, **LIVE))
    assert {k for k, v in statuses(conn).items() if v == "stale_expired"} == {r.id for r in approved.rows}
    assert result.changed == 2
