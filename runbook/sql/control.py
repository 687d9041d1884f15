"""Control of running sweeps and undos from anywhere: stop requests, and what is running now.

Every function returns a ``psycopg.sql.Composed`` (identifiers through ``sql.Identifier``,
values as named placeholders); nothing is executed here (``runbook.db.control`` runs them).
"""

from __future__ import annotations

from psycopg import sql

from .ledger import LEDGER_SCHEMA

__all__ = ["request_stop", "stop_request", "note_candidates", "open_runs", "control_grants"]


def _t(name: str) -> sql.Identifier:
    return sql.Identifier(LEDGER_SCHEMA, name)


def request_stop() -> sql.Composed:
    """Ask run %(run_id)s to stop, as %(requested_by)s (a JSON text), when it is still open
    (its ``runs`` row not finished): one row, the request's time; no row when the run is
    unknown or already finished."""
    return sql.SQL(
        "INSERT INTO {stops} (run_id, requested_by) SELECT %(run_id)s, %(requested_by)s::jsonb"
        " WHERE EXISTS (SELECT 1 FROM {runs} WHERE run_id = %(run_id)s AND finished_at IS NULL) RETURNING requested_at"
    ).format(stops=_t("stop_requests"), runs=_t("runs"))


def stop_request() -> sql.Composed:
    """The first request that run %(run_id)s stop made at or after %(since)s (a timestamptz:
    when this invocation of the run started, so a resumed run is not stopped by an old one):
    requested_at, requested_by (what the requester says), requested_role (the server's); no row when there is none."""
    return sql.SQL(
        "SELECT requested_at, requested_by, requested_role FROM {} WHERE run_id = %(run_id)s AND requested_at >= %(since)s"
        " ORDER BY requested_at LIMIT 1"
    ).format(_t("stop_requests"))


def note_candidates() -> sql.Composed:
    """Put %(candidates)s (how many rows the run means to change) into run %(run_id)s's
    ``outcome`` while it runs, for ``python -m runbook status``'s time left; ``finish_run``
    replaces it."""
    return sql.SQL(
        "UPDATE {} SET outcome = jsonb_build_object('candidates', %(candidates)s::bigint) WHERE run_id = %(run_id)s"
    ).format(_t("runs"))


def open_runs() -> sql.Composed:
    """Every run whose ``runs`` row is open, oldest first: run_id, kind, target, operator,
    started_at, rows changed so far, batches so far, rows changed in the last minute, the
    candidates it noted, the pid and application_name of a live session of it in this
    database (NULL when none is visible: killed, or another role's session this role may not
    see), and whether a stop was requested since it started."""
    return sql.SQL(
        "SELECT r.run_id, r.kind, r.target, r.operator, r.started_at,"
        " (SELECT coalesce(sum(b.rows_changed), 0) FROM {batches} b WHERE b.run_id = r.run_id),"
        " (SELECT count(*) FROM {batches} b WHERE b.run_id = r.run_id),"
        " (SELECT coalesce(sum(b.rows_changed), 0) FROM {batches} b WHERE b.run_id = r.run_id"
        "   AND b.committed_at > clock_timestamp() - interval '60 seconds'),"
        " (r.outcome->>'candidates')::bigint,"
        " a.pid, a.application_name,"
        " EXISTS (SELECT 1 FROM {stops} s WHERE s.run_id = r.run_id)"
        " FROM {runs} r LEFT JOIN LATERAL (SELECT pid, application_name FROM pg_catalog.pg_stat_activity"
        "   WHERE datname = current_database() AND '/' || application_name || '/' LIKE '%%/' || replace(r.run_id, '_', '\\_') || '/%%'"
        "   ORDER BY backend_start LIMIT 1) a"
        " ON true WHERE r.finished_at IS NULL ORDER BY r.started_at"
    ).format(batches=_t("batches"), runs=_t("runs"), stops=_t("stop_requests"))


def control_grants(role: str) -> sql.Composed:
    """What the ledger's owner grants ``role`` so that it may see runs and ask them to stop
    (three statements, ``;``-separated; shown in messages). No placeholders."""
    schema, who = sql.Identifier(LEDGER_SCHEMA), sql.Identifier(role)
    return sql.SQL(
        "GRANT USAGE ON SCHEMA {schema} TO {who}; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {who}; "
        "GRANT INSERT (run_id, requested_by) ON {stops} TO {who}"
    ).format(schema=schema, who=who, stops=_t("stop_requests"))
