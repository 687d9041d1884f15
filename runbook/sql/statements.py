"""The SQL the runbook runs, built and never executed here.

Every function returns a ``psycopg.sql.Composed`` whose identifiers come from the
Target through ``sql.Identifier`` and whose values are named placeholders bound at
execution time. Keeping construction apart from execution lets a preview print
exactly the statements a sweep will run.

How a sweep selects rows without an index (FACTS.md: nothing indexes status,
file_purpose or created_at, so the production subquery scans the table for every
batch): one scan copies the candidates' (created_at, id) into a session-local temp
table (``snapshot``), and each batch walks that list in (created_at, id) order by
keyset, locks its rows by primary key with ``FOR UPDATE SKIP LOCKED`` and re-checks the
full predicate before updating. Rows a concurrent transaction made terminal fail the
re-check; rows it holds locked are skipped and picked up by a later pass.
"""

from __future__ import annotations

from psycopg import sql

from ..rules.target import Target

LEDGER_SCHEMA = "litellm_runbook"  # runbook.ledger.SCHEMA; kept here so SQL needs no import cycle

__all__ = [
    "SNAPSHOT_TABLE",
    "predicate",
    "next_batch",
    "next_batch_and_count",
    "candidate_count",
    "breakdown",
    "snapshot",
    "snapshot_next",
    "batch_update",
    "UNDO_TABLE",
    "undo_latest",
    "undo_snapshot",
    "undo_counts",
    "undo_next",
    "undo_update",
    "ledger_batches",
    "run_start",
    "read_only_pinned",
    "health_visibility",
    "lock_holder",
    "health_signals",
]

SNAPSHOT_TABLE = sql.Identifier("pg_temp", "runbook_candidates")


def _col(target: Target, column: str, alias: str | None) -> sql.Composable:
    name = getattr(target, column)
    return sql.Identifier(alias, name) if alias else sql.Identifier(name)


def table(target: Target) -> sql.Identifier:
    return sql.Identifier(target.schema, target.table)


def _names(target: Target) -> dict[str, sql.Composable]:
    """The identifiers every statement formats in: {table}, {key}, {time}, {status}, {purpose}."""
    return {
        "table": table(target),
        "key": sql.Identifier(target.key_column),
        "time": sql.Identifier(target.time_column),
        "status": sql.Identifier(target.status_column),
        "purpose": sql.Identifier(target.purpose_column),
    }


def predicate(target: Target, alias: str | None = None) -> sql.Composed:
    """The candidate rule. Placeholders: %(purpose)s, %(terminal)s, %(cutoff)s.

    ``<> ALL(array)`` is ``NOT IN (list)`` with one bound parameter; like NOT IN it is
    never true for a NULL status. %(cutoff)s is bound as a naive UTC ``timestamp``.
    """
    return sql.SQL(
        "{purpose} = %(purpose)s AND {status} <> ALL(%(terminal)s::text[]) AND {time} < %(cutoff)s::timestamp"
    ).format(
        purpose=_col(target, "purpose_column", alias),
        status=_col(target, "status_column", alias),
        time=_col(target, "time_column", alias),
    )


def next_batch(target: Target) -> sql.Composed:
    """The rows the next batch takes, oldest first: what preview shows. %(batch_size)s."""
    return sql.SQL(
        "SELECT {key}, {status}, {time}, {purpose} FROM {table} WHERE {pred} "
        "ORDER BY {time}, {key} LIMIT %(batch_size)s"
    ).format(
        **_names(target),
        pred=predicate(target),
    )


def next_batch_and_count(target: Target) -> sql.Composed:
    """``next_batch`` plus the total candidate count in a sixth column, in one table scan.

    No rows means no candidates. One scan instead of two matters on a table without an
    index: each scan reads the whole heap.
    """
    return sql.SQL(
        "WITH c AS MATERIALIZED (SELECT {key}, {status}, {time}, {purpose} FROM {table} WHERE {pred}) "
        "SELECT {key}, {status}, {time}, {purpose}, (SELECT count(*) FROM c) FROM c "
        "ORDER BY {time}, {key} LIMIT %(batch_size)s"
    ).format(**_names(target), pred=predicate(target))


def candidate_count(target: Target) -> sql.Composed:
    """How many candidates, and the oldest one's time."""
    return sql.SQL("SELECT count(*), min({time}) FROM {table} WHERE {pred}").format(
        **_names(target), pred=predicate(target)
    )


def breakdown(target: Target) -> sql.Composed:
    """One scan grouping every row by purpose, status, age bucket, candidacy and age vs cutoff.

    Age is measured against %(now)s (naive UTC). Buckets: <1d, 1-7d, 7-30d, 30-90d, >=90d.
    """
    return sql.SQL(
        "SELECT {purpose}, {status}, "
        "CASE WHEN {time} >= %(now)s::timestamp - interval '1 day' THEN '<1d' "
        "WHEN {time} >= %(now)s::timestamp - interval '7 days' THEN '1-7d' "
        "WHEN {time} >= %(now)s::timestamp - interval '30 days' THEN '7-30d' "
        "WHEN {time} >= %(now)s::timestamp - interval '90 days' THEN '30-90d' "
        "ELSE '>=90d' END AS age, "
        "coalesce(({pred}), false) AS candidate, {time} < %(cutoff)s::timestamp AS stale, count(*), min({time}) "
        "FROM {table} GROUP BY 1, 2, 3, 4, 5"
    ).format(
        **_names(target),
        pred=predicate(target),
    )


def snapshot(target: Target) -> list[sql.Composed]:
    """Copy every candidate's (time, key) into a session temp table, and index it.

    Four statements, run in order in one transaction; the second's rowcount is the
    number of candidates at the start of the pass.
    """
    return [
        sql.SQL("DROP TABLE IF EXISTS {snap}").format(snap=SNAPSHOT_TABLE),
        sql.SQL("CREATE TEMP TABLE {name} AS SELECT {time} AS t, {key} AS k FROM {table} WHERE {pred}").format(
            **_names(target), name=sql.Identifier("runbook_candidates"), pred=predicate(target)
        ),
        sql.SQL("CREATE INDEX ON {snap} (t, k)").format(snap=SNAPSHOT_TABLE),
        sql.SQL("ANALYZE {snap}").format(snap=SNAPSHOT_TABLE),
    ]


def snapshot_next() -> sql.Composed:
    """The next %(batch_size)s snapshot entries after the keyset (%(after_t)s, %(after_k)s)."""
    return sql.SQL("SELECT t, k FROM {snap} WHERE (t, k) > (%(after_t)s, %(after_k)s) ORDER BY t, k LIMIT %(batch_size)s").format(
        snap=SNAPSHOT_TABLE
    )


def batch_update(target: Target) -> sql.Composed:
    """Set %(new_status)s on the rows of %(ids)s still candidates, and write the ledger.

    One statement, so the UPDATE, its ``changes`` rows and its ``batches`` row commit
    together or not at all. The predicate is checked twice: in the locking subquery
    (re-evaluated on the newest row version once locked) and again in the UPDATE itself,
    so a row that turned terminal meanwhile is never overwritten; rows another session
    holds locked are skipped. The UPDATE finds each locked row by its ctid (a TID scan)
    rather than a second primary-key probe; a row whose locked version is newer than the
    statement's snapshot is then simply not updated, and a later pass picks it up.
    Placeholders: the predicate's, %(ids)s, %(new_status)s, %(run_id)s, %(batch)s,
    %(wal_start)s (a ``pg_lsn``). Returns one row: the number of rows changed, and the
    bytes of WAL every session inserted since %(wal_start)s, read once the rows are written
    (the batch's WAL measure, without a round trip of its own).
    """
    return sql.SQL(
        "WITH locked AS ("
        "SELECT c.ctid AS tid, c.{status} FROM {table} AS c "
        "WHERE c.{key} = ANY(%(ids)s::text[]) AND {pred_c} "
        "FOR UPDATE SKIP LOCKED), "
        "changed AS ("
        "UPDATE {table} AS u SET {status} = %(new_status)s FROM locked "
        "WHERE u.ctid = locked.tid AND {pred_u} "
        "RETURNING u.{key} AS object_id, locked.{status} AS previous_status), "
        "logged AS ("
        "INSERT INTO {changes} (run_id, batch, object_id, previous_status, new_status) "
        "SELECT %(run_id)s, %(batch)s, object_id, previous_status, %(new_status)s FROM changed RETURNING 1) "
        "INSERT INTO {batches} (run_id, batch, rows_changed) "
        "SELECT %(run_id)s, %(batch)s, count(*) FROM logged "
        "RETURNING rows_changed, pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %(wal_start)s::pg_lsn)::bigint"
    ).format(
        **_names(target),
        pred_c=predicate(target, "c"),
        pred_u=predicate(target, "u"),
        changes=sql.Identifier(LEDGER_SCHEMA, "changes"),
        batches=sql.Identifier(LEDGER_SCHEMA, "batches"),
    )


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
    ).format(**_names(target), source=UNDO_TABLE if from_snapshot else sql.SQL("({})").format(undo_latest(target)))


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
        **_names(target),
        changes=sql.Identifier(LEDGER_SCHEMA, "changes"),
        batches=sql.Identifier(LEDGER_SCHEMA, "batches"),
    )


def ledger_batches() -> sql.Composed:
    """The batches the ledger holds for run %(run_id)s from number %(first_batch)s on:
    batch, rows_changed."""
    return sql.SQL("SELECT batch, rows_changed FROM {} WHERE run_id = %(run_id)s AND batch >= %(first_batch)s ORDER BY batch").format(
        sql.Identifier(LEDGER_SCHEMA, "batches")
    )


def read_only_pinned() -> sql.SQL:
    """Two statements, one round trip (no parameters: the simple query protocol): this
    transaction is READ ONLY and its ``search_path`` is pg_catalog, then pg_temp (last,
    so a temp object never shadows a built-in); the runbook names all else with its schema."""
    return sql.SQL("SET TRANSACTION READ ONLY; SET LOCAL search_path TO pg_catalog, pg_temp")


def run_start() -> sql.SQL:
    """The server's clock and its ``wal_buffers`` in bytes, read once when a sweep begins."""
    return sql.SQL("SELECT now(), pg_size_bytes(current_setting('wal_buffers'))")


def lock_holder() -> sql.SQL:
    """The session of this database holding the advisory lock (%(hi)s, %(lo)s) (a bigint
    key's high and low halves): pid, application_name, user, client ('local' for a Unix
    socket; NULL when not visible), backend_start (NULL when not visible)."""
    return sql.SQL(
        "SELECT a.pid, a.application_name, a.usename,"
        " CASE WHEN a.client_addr IS NOT NULL THEN a.client_addr::text WHEN a.backend_start IS NOT NULL THEN 'local' END,"
        " a.backend_start"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND l.classid::bigint = %(hi)s AND l.objid::bigint = %(lo)s"
    )


def health_visibility() -> sql.SQL:
    """One row: the current role, and whether it sees other roles' rows of the statistics
    views (``pg_read_all_stats``'s privileges: that role, pg_monitor, or superuser)."""
    return sql.SQL("SELECT current_user, pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')")


def health_signals() -> sql.SQL:
    """One row: WAL bytes the slowest standby has not replayed, sessions waiting on locks
    on table %(table)s (a regclass name), and whether a VACUUM of it runs that should
    pause a sweep begun at %(since)s (see ``runbook.health``; NULL: every VACUUM counts)."""
    return sql.SQL(
        "WITH t AS (SELECT %(table)s::regclass::oid AS oid) SELECT"
        " (SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::bigint"
        "    FROM pg_stat_replication WHERE NOT pg_is_in_recovery()),"
        " (SELECT count(DISTINCT w.pid) FROM pg_locks w, t WHERE NOT w.granted AND w.pid <> pg_backend_pid()"
        "    AND (w.relation = t.oid OR EXISTS (SELECT 1 FROM pg_locks h WHERE h.pid = w.pid AND h.relation = t.oid))),"
        " EXISTS (SELECT 1 FROM pg_stat_progress_vacuum v JOIN t ON v.relid = t.oid"
        "    LEFT JOIN pg_stat_activity a ON a.pid = v.pid"
        "    WHERE NOT coalesce(a.backend_type = 'autovacuum worker' AND a.xact_start >= %(since)s"
        "      AND a.query NOT LIKE '%%(to prevent wraparound)%%', false))"
    )
