"""Undo: the ledger's latest change of each object a run changed, and the batch that restores them.

Every function returns a ``psycopg.sql.Composed`` (identifiers through ``sql.Identifier``,
values as named placeholders); nothing is executed here.
"""

from __future__ import annotations

from psycopg import sql

from ..rules.target import Target
from .candidates import names
from .ledger import LEDGER_SCHEMA

__all__ = ["UNDO_TABLE", "undo_latest", "undo_snapshot", "undo_counts", "undo_next", "undo_update"]

UNDO_TABLE = sql.Identifier("pg_temp", "runbook_undo")


def undo_latest(target: Target) -> sql.Composed:
    """For each object run %(of_run)s changed, the latest change of it in the ledger by any
    run on %(target_name)s (``schema.table``): object_id, seq, run_id, undoes_run_id (of the
    run that made it), previous_status, new_status.

    One hash join over the ledger's changes: ``changes`` is keyed by run, not by object,
    so that the sweep's ledger inserts stay append-only (bench/RESULTS.md).
    """
    return sql.SQL(
        "SELECT DISTINCT ON (c.object_id) c.object_id, c.seq, c.run_id, r.undoes_run_id, c.previous_status, c.new_status "
        "FROM {changes} AS c JOIN {runs} AS r ON r.run_id = c.run_id "
        "WHERE r.target = %(target_name)s AND c.object_id IN (SELECT object_id FROM {changes} WHERE run_id = %(of_run)s) "
        "ORDER BY c.object_id, c.seq DESC"
    ).format(changes=sql.Identifier(LEDGER_SCHEMA, "changes"), runs=sql.Identifier(LEDGER_SCHEMA, "runs"))


def undo_snapshot(target: Target) -> list[sql.Composed]:
    """``undo_latest`` into a session temp table, indexed for the walk newest change first.

    Placeholders: ``undo_latest``'s. Run in order in one transaction, after the target's
    lock is taken: no other run of the runbook changes these objects until the undo ends.
    """
    return [
        sql.SQL("DROP TABLE IF EXISTS {}").format(UNDO_TABLE),
        sql.SQL("CREATE TEMP TABLE {} AS {}").format(sql.Identifier("runbook_undo"), undo_latest(target)),
        sql.SQL("CREATE INDEX ON {} (seq)").format(UNDO_TABLE),
        sql.SQL("ANALYZE {}").format(UNDO_TABLE),
    ]


def undo_counts(target: Target, from_snapshot: bool) -> sql.Composed:
    """Run %(of_run)s's objects by what undo may do with them, read from the temp table of
    ``undo_snapshot`` or (``from_snapshot=False``, read only) from ``undo_latest`` itself.

    One row: objects the run changed; of them, whose latest change is the run's and that
    still hold what it wrote (restorable); whose latest change is the run's but that were
    changed or deleted since outside the ledger (changed_since); whose latest change is an
    undo of the run (already_undone); whose latest change is another run's (later_run).
    """
    return sql.SQL(
        "SELECT count(*), "
        "count(*) FILTER (WHERE l.run_id = %(of_run)s AND t.{status} = l.new_status), "
        "count(*) FILTER (WHERE l.run_id = %(of_run)s AND t.{status} IS DISTINCT FROM l.new_status), "
        "count(*) FILTER (WHERE l.run_id <> %(of_run)s AND l.undoes_run_id = %(of_run)s), "
        "count(*) FILTER (WHERE l.run_id <> %(of_run)s AND l.undoes_run_id IS DISTINCT FROM %(of_run)s) "
        "FROM {source} AS l LEFT JOIN {table} AS t ON t.{key} = l.object_id"
    ).format(**names(target), source=UNDO_TABLE if from_snapshot else sql.SQL("({})").format(undo_latest(target)))


def undo_next() -> sql.Composed:
    """The next %(batch_size)s objects to restore from the ``undo_snapshot`` table: those
    whose latest change is run %(of_run)s's, newest change first, below seq %(after_seq)s.
    Columns: object_id, previous_status, new_status, seq."""
    return sql.SQL(
        "SELECT object_id, previous_status, new_status, seq FROM {} WHERE run_id = %(of_run)s AND seq < %(after_seq)s "
        "ORDER BY seq DESC LIMIT %(batch_size)s"
    ).format(UNDO_TABLE)


def undo_update(target: Target) -> sql.Composed:
    """Restore each object of %(ids)s to %(previous)s where it still holds %(expected)s; log it.

    Parallel arrays: %(ids)s, %(previous)s (the status before the undone change),
    %(expected)s (what that change wrote). Waits for row locks (bounded by lock_timeout)
    instead of skipping them, so that a row left alone is one that really changed since;
    the status is re-checked on the locked row version. Writes, in the same statement,
    one ``changes`` row per restored object and the ``batches`` row (%(run_id)s,
    %(batch)s). Returns one row: the number of rows restored.
    """
    return sql.SQL(
        "WITH wanted AS (SELECT * FROM unnest(%(ids)s::text[], %(previous)s::text[], %(expected)s::text[]) "
        "AS w(object_id, previous_status, expected)), "
        "locked AS (SELECT c.{key}, wanted.previous_status, wanted.expected FROM {table} AS c "
        "JOIN wanted ON c.{key} = wanted.object_id "
        "WHERE c.{status} = wanted.expected ORDER BY c.{key} FOR UPDATE OF c), "
        "changed AS (UPDATE {table} AS u SET {status} = locked.previous_status FROM locked "
        "WHERE u.{key} = locked.{key} AND u.{status} = locked.expected "
        "RETURNING u.{key} AS object_id, locked.previous_status, locked.expected), "
        "logged AS (INSERT INTO {changes} (run_id, batch, object_id, previous_status, new_status) "
        "SELECT %(run_id)s, %(batch)s, object_id, expected, previous_status FROM changed RETURNING 1) "
        "INSERT INTO {batches} (run_id, batch, rows_changed) "
        "SELECT %(run_id)s, %(batch)s, count(*) FROM logged RETURNING rows_changed"
    ).format(
        **names(target),
        changes=sql.Identifier(LEDGER_SCHEMA, "changes"),
        batches=sql.Identifier(LEDGER_SCHEMA, "batches"),
    )
