"""Which rows the rule selects and what it changes: exactly LiteLLM's own predicate, oldest first
(ties by id), a cutoff that does not shift with the session's TimeZone, the status column only,
statuses never seen before named; a Target of plain identifiers and terminal statuses."""

from __future__ import annotations

from datetime import timedelta, timezone

import psycopg
import pytest

from runbook import ParameterError, Target, inspect, options, preview, sweep
from runbook.ops.inspection import Count
from tests.rows import PRODUCTION_SQL, db_now, insert, production_candidates, standard_mix, state, statuses
from tests.runs import LIVE


def test_default_predicate_selects_exactly_the_production_rows(conn: psycopg.Connection, dsn: str) -> None:
    rows = standard_mix(conn)
    rows["queued_7d_3h"] = insert(conn, status="queued", age_days=7 + 3 / 24)  # within 9 hours of the cutoff
    # The fixture server runs in UTC: compare in a session that does not, so a cutoff that
    # shifted with the session TimeZone (production's timestamptz trap) would show.
    with psycopg.connect(dsn, autocommit=True, options="-c TimeZone=America/Anchorage") as alaska:
        assert alaska.execute("SHOW TimeZone").fetchone() == ("America/Anchorage",)
        expected = production_candidates(alaska, 7)  # LiteLLM's statement as it means it: in UTC
        wanted = {rows[k] for k in ("queued_old", "in_progress_old", "incomplete_old", "requires_action_old", "queued_7d_3h")}
        assert expected == wanted
        # The trap is armed: production's statement in this session's TimeZone misses the row
        # 3 hours past the cutoff (its created_at is read as Alaska time, 9 hours later).
        try:
            with alaska.transaction():
                now = db_now(alaska)
                changed = alaska.execute(PRODUCTION_SQL, [(now - timedelta(days=7)).replace(tzinfo=timezone.utc), 10**9]).rowcount
                raise _Undo
        except _Undo:
            pass
        assert changed == len(wanted) - 1
        seen = preview(alaska, Target(), options(batch_size=1000))
        assert {r.id for r in seen.rows} == expected and seen.candidates == len(expected)
        sweep(alaska, Target(), options(batch_size=1000, **LIVE))
    assert {k for k, v in statuses(conn).items() if v == "stale_expired"} - {rows["stale_expired_old"]} == expected


class _Undo(Exception):
    pass


def test_only_status_of_candidates_changes(conn: psycopg.Connection) -> None:
    rows = standard_mix(conn)
    before = state(conn)
    result = sweep(conn, Target(), options(batch_size=2, **LIVE))
    after = state(conn)
    changed = {k for k in before if before[k] != after[k]}
    candidates = {rows[k] for k in ("queued_old", "in_progress_old", "incomplete_old", "requires_action_old")}
    assert changed == candidates and result.changed == 4
    status_index = 9  # the 10th column of the real table is status
    for key in changed:
        assert after[key][status_index] == "stale_expired"
        assert after[key][:status_index] + after[key][status_index + 1 :] == before[key][:status_index] + before[key][status_index + 1 :]
    # the traps stay as production leaves them
    for label in ("null_old", "queued_recent", "queued_just_inside", "batch_old", "finetune_old", "completed_old"):
        assert after[rows[label]] == before[rows[label]], label


def test_preview_order_is_oldest_first_ties_by_id(conn: psycopg.Connection) -> None:
    for i in range(6):
        insert(conn, status="queued", age_days=8 + (i % 2))
    rows = preview(conn, Target(), options(batch_size=6)).rows
    assert [(r.created_at, r.id) for r in rows] == sorted((r.created_at, r.id) for r in rows)


def test_cutoff_does_not_shift_with_session_timezone(conn: psycopg.Connection, dsn: str) -> None:
    rows = {h: insert(conn, status="queued", age_days=7 + h / 24) for h in (-13, -11, -1, 1, 11, 13)}
    utc = {r.id for r in preview(conn, Target(), options(batch_size=100)).rows}
    assert utc == {rows[1], rows[11], rows[13]}
    for zone in ("Pacific/Kiritimati", "America/Anchorage"):
        with psycopg.connect(dsn, autocommit=True, options=f"-c TimeZone={zone}") as shifted:
            assert {r.id for r in preview(shifted, Target(), options(batch_size=100)).rows} == utc


def test_fixed_cutoff_selects_rows_older_than_it(conn: psycopg.Connection) -> None:
    old = insert(conn, status="queued", age_days=30)
    insert(conn, status="queued", age_days=10)
    cutoff = (db_now(conn) - timedelta(days=20)).isoformat() + "Z"
    assert [r.id for r in preview(conn, Target(), options(cutoff=cutoff)).rows] == [old]


def test_inspect_names_every_status_it_has_not_seen_before(conn: psycopg.Connection) -> None:
    standard_mix(conn)  # every status LiteLLM is known to write, and NULL
    quiet = inspect(conn, Target(), options())
    assert quiet.unknown_statuses == [] and not any("not seen before" in w for w in quiet.warnings)
    old_new = insert(conn, status="archived", age_days=10)  # a status a newer LiteLLM might write
    insert(conn, status="archived", age_days=1)
    insert(conn, status="paused", age_days=9, purpose="batch")
    report = inspect(conn, Target(), options())
    assert report.unknown_statuses == [Count("archived", 2, 1), Count("paused", 1, 0)]
    assert (
        "2 status(es) this runbook has not seen before: 'archived' (2 rows, 1 candidates), 'paused' (1 rows, 0 candidates). "
        "The rule leaves out only the terminal statuses ['completed', 'complete', 'failed', 'expired', 'cancelled', "
        "'stale_expired'], so a stale 'response' row with any other status is swept: find out what LiteLLM means by "
        "these before a live sweep."
    ) in report.warnings
    assert report.to_dict()["unknown_statuses"] == [
        {"label": "archived", "rows": 2, "candidates": 1}, {"label": "paused", "rows": 1, "candidates": 0}
    ]
    assert old_new in {r.id for r in preview(conn, Target(), options(batch_size=100)).rows}


# -- the target names plain identifiers and terminal statuses ----------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("table", 'x"; DROP TABLE y; --'), ("schema", "pub lic"), ("status_column", "stätus"), ("key_column", "")],
)
def test_target_rejects_names_that_are_not_plain_identifiers(field: str, value: str) -> None:
    with pytest.raises(ParameterError, match=f"parameter {field}="):
        Target(**{field: value})  # type: ignore[arg-type]


def test_target_new_status_must_be_terminal() -> None:
    with pytest.raises(ParameterError, match="new_status='swept' is not allowed: one of terminal_statuses"):
        Target(new_status="swept")


def test_inspect_says_when_the_databases_timezone_shifts_litellms_own_cutoff(conn: psycopg.Connection, dsn: str) -> None:
    insert(conn, status="queued", age_days=10)
    report = inspect(conn, Target(), options())  # the fixture's sessions run in UTC
    assert not [w for w in report.warnings if "TimeZone" in w]
    with psycopg.connect(dsn, autocommit=True, options="-c TimeZone=Asia/Kathmandu") as nepal:
        shifted = [w for w in inspect(nepal, Target(), options()).warnings if "TimeZone" in w]
    assert shifted == [
        "The database's TimeZone is Asia/Kathmandu (UTC+05:45 now): LiteLLM's own jobs bind their cutoff as timestamptz "
        "against these timestamp-without-time-zone columns, so their cutoff falls 5.75 hour(s) later than the one they "
        "mean. This runbook binds its cutoff in UTC: it selects the rows LiteLLM means to, not the ones it does."
    ]
    with psycopg.connect(dsn, autocommit=True, options="-c TimeZone=America/Anchorage") as alaska:
        (west,) = [w for w in inspect(alaska, Target(), options()).warnings if "TimeZone" in w]
    assert "(UTC-09:00 now)" in west or "(UTC-08:00 now)" in west  # daylight saving time
    assert "hour(s) earlier than the one they mean" in west
