"""The ledger read back as a history: runs in a window, a run's batches, the seals of its files.

Every function returns a ``psycopg.sql.Composed`` (identifiers through ``sql.Identifier``,
values as named placeholders); nothing is executed here (``runbook.ops.history`` runs them).
"""

from __future__ import annotations

from psycopg import sql

from .ledger import LEDGER_SCHEMA

__all__ = ["runs_since", "run_batches", "seals_of"]


def _t(name: str) -> sql.Identifier:
    return sql.Identifier(LEDGER_SCHEMA, name)


def runs_since() -> sql.Composed:
    """Every run that started in the last %(days)s days, newest first, of target %(rule)s
    ('' for all; %(default_rule)s is the name a run without one means): run_id, kind, table,
    target, operator, started_at, finished_at, parameters, rows_changed, stop_reason,
    undoes_run_id, the undo runs of it with how each ended (``U (done)``, oldest first), outcome."""
    return sql.SQL(
        "SELECT r.run_id, r.kind, r.target, coalesce(to_jsonb(r)->'identity'->>'rule', %(default_rule)s) AS rule,"
        " r.operator, r.started_at, r.finished_at, r.parameters, r.rows_changed, r.stop_reason, r.undoes_run_id,"
        " (SELECT array_agg(u.run_id || ' (' || coalesce(u.stop_reason, 'running') || ')' ORDER BY u.started_at)"
        " FROM {runs} u WHERE u.undoes_run_id = r.run_id), r.outcome"
        " FROM {runs} r WHERE r.started_at >= clock_timestamp() - make_interval(secs => %(days)s * 86400)"
        " AND (%(rule)s = '' OR coalesce(to_jsonb(r)->'identity'->>'rule', %(default_rule)s) = %(rule)s)"
        " ORDER BY r.started_at DESC"
    ).format(runs=_t("runs"))


def run_batches() -> sql.Composed:
    """Run %(run_id)s's committed batches in order: batch, rows_changed, committed_at, archive_file."""
    return sql.SQL(
        "SELECT batch, rows_changed, committed_at, archive_file FROM {} WHERE run_id = %(run_id)s ORDER BY batch"
    ).format(_t("batches"))


def seals_of() -> sql.Composed:
    """The seal of every file of the runs %(run_ids)s (a text array): record_file, run_id,
    sha256 (the first ``records`` row per file name)."""
    return sql.SQL(
        "SELECT DISTINCT ON (record_file) record_file, run_id, sha256 FROM {} WHERE run_id = ANY(%(run_ids)s::text[])"
        " ORDER BY record_file, seq"
    ).format(_t("records"))
