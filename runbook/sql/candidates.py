"""The candidates of a sweep: the rule, the rows it selects, and the batch that changes them.

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
from .ledger import LEDGER_SCHEMA

__all__ = [
    "SNAPSHOT_TABLE", "EMPTY", "table", "names", "key_text", "key_match", "predicate", "next_batch", "next_batch_and_count", "next_batch_plan",
    "candidate_count", "breakdown", "payload_size", "next_batch_archive_bytes", "snapshot", "snapshot_last",
    "snapshot_next", "batch_update",
]  # fmt: skip

SNAPSHOT_TABLE = sql.Identifier("pg_temp", "runbook_candidates")
EMPTY = sql.SQL("{}::jsonb").format(sql.Literal("{}"))  # LiteLLM's empty payload, its columns' default


def _col(target: Target, column: str, alias: str | None) -> sql.Composable:
    return _id(getattr(target, column), alias)


def _id(name: str, alias: str | None) -> sql.Identifier:
    return sql.Identifier(alias, name) if alias else sql.Identifier(name)


def key_text(target: Target, alias: str | None = None) -> sql.Composable:
    """A row's key as one text: the key column itself, or for a composite key the JSON
    array of its columns (``["req-1", "web_search"]``). Snapshots, previews, fingerprints
    and batches name rows by it."""
    if not target.more_key_columns:
        return _id(target.key_column, alias)
    return sql.SQL("jsonb_build_array({})::text").format(sql.SQL(", ").join(_id(c, alias) for c in target.key_columns))


def key_match(target: Target, alias: str) -> sql.Composed:
    """True for the rows of ``alias`` whose key is one of %(ids)s (``key_text`` values), in a
    form the primary key's index serves."""
    if not target.more_key_columns:
        return sql.SQL("{} = ANY(%(ids)s::text[])").format(_id(target.key_column, alias))
    parts = sql.SQL(", ").join(sql.SQL("i.k::jsonb->>{}").format(sql.Literal(n)) for n in range(len(target.key_columns)))
    return sql.SQL("({}) IN (SELECT {} FROM unnest(%(ids)s::text[]) AS i(k))").format(
        sql.SQL(", ").join(_id(c, alias) for c in target.key_columns), parts
    )


def table(target: Target) -> sql.Identifier:
    """The target table, ``schema.table``, as one qualified identifier."""
    return sql.Identifier(target.schema, target.table)


def names(target: Target) -> dict[str, sql.Composable]:
    """What every statement formats in: {table}, {key} (the first key column), {keytext}
    (``key_text``), {time}, {status} and {purpose} (``NULL::text`` for a target whose rule
    reads no status or purpose)."""
    none = sql.SQL("NULL::text")
    return {
        "table": table(target),
        "key": sql.Identifier(target.key_column),
        "keytext": key_text(target),
        "time": sql.Identifier(target.time_column),
        "status": sql.Identifier(target.status_column) if target.status_rule and target.status_column else none,
        "purpose": sql.Identifier(target.purpose_column) if target.purpose_column else none,
    }


def predicate(target: Target, alias: str | None = None) -> sql.Composed:
    """The candidate rule. Placeholders: %(cutoff)s, and %(purpose)s, %(terminal)s where the
    target's rule reads them.

    ``<> ALL(array)`` is ``NOT IN (list)`` with one bound parameter; like NOT IN it is
    never true for a NULL status. %(cutoff)s is bound as a naive UTC ``timestamp``. A
    target with an ``unprocessed_column`` (batch jobs) also needs it false, as LiteLLM's
    ``batch_processed = false``; one with ``payload_columns`` needs one of them to hold
    something other than NULL or ``'{}'``.
    """
    parts: list[sql.Composable] = []
    if target.purpose_column:
        parts.append(sql.SQL("{} = %(purpose)s").format(_col(target, "purpose_column", alias)))
    if target.status_rule:
        parts.append(sql.SQL("{} <> ALL(%(terminal)s::text[])").format(_col(target, "status_column", alias)))
    parts.append(sql.SQL("{} < %(cutoff)s::timestamp").format(_col(target, "time_column", alias)))
    if target.unprocessed_column is not None:
        parts.append(sql.SQL("{} = false").format(_id(target.unprocessed_column, alias)))
    if target.payload_columns:
        held = sql.SQL(" OR ").join(sql.SQL("{} <> {}").format(_id(c, alias), EMPTY) for c in target.payload_columns)
        parts.append(sql.SQL("({})").format(held))
    return sql.SQL(" AND ").join(parts)


def next_batch(target: Target) -> sql.Composed:
    """The rows the next batch takes, oldest first: what preview shows. %(batch_size)s."""
    return sql.SQL(
        "SELECT {keytext}, {status}, {time}, {purpose} FROM {table} WHERE {pred} "
        "ORDER BY {time}, {keytext} LIMIT %(batch_size)s"
    ).format(
        **names(target),
        pred=predicate(target),
    )


def next_batch_and_count(target: Target) -> sql.Composed:
    """``next_batch`` plus the total candidate count in a sixth column, in one table scan.

    No rows means no candidates. One scan instead of two matters on a table without an
    index: each scan reads the whole heap.
    """
    return sql.SQL(
        "WITH c AS MATERIALIZED (SELECT {keytext} AS k, {status} AS s, {time} AS t, {purpose} AS p FROM {table} "
        "WHERE {pred}) SELECT k, s, t, p, (SELECT count(*) FROM c) FROM c ORDER BY t, k LIMIT %(batch_size)s"
    ).format(**names(target), pred=predicate(target))


def next_batch_plan(target: Target) -> sql.Composed:
    """The plan of ``next_batch`` as JSON (``EXPLAIN (FORMAT JSON)``, not run): one row, one
    column. Placeholders: ``next_batch``'s."""
    return sql.SQL("EXPLAIN (FORMAT JSON) {}").format(next_batch(target))


def candidate_count(target: Target) -> sql.Composed:
    """How many candidates, and the oldest one's time: count, min(time). Placeholders: the predicate's."""
    return sql.SQL("SELECT count(*), min({time}) FROM {table} WHERE {pred}").format(
        **names(target), pred=predicate(target)
    )


def payload_size(target: Target) -> sql.Composed:
    """One row: the bytes the candidates' payload columns take as stored (compressed, TOAST
    included; ``pg_column_size`` reads no TOAST), what a clear frees. Placeholders: the predicate's."""
    sizes = sql.SQL(" + ").join(sql.SQL("coalesce(pg_column_size({}), 0)").format(sql.Identifier(c)) for c in target.payload_columns)
    return sql.SQL("SELECT sum({sizes})::bigint FROM {table} WHERE {pred}").format(
        sizes=sizes if target.payload_columns else sql.SQL("0"), table=table(target), pred=predicate(target)
    )


def next_batch_archive_bytes(target: Target) -> sql.Composed:
    """One row: how many rows the next batch archives and the bytes of their archive lines
    (``row_to_json(row)``, before compression). Reads whole rows: needs SELECT on every column.
    Placeholders: ``next_batch``'s."""
    return sql.SQL(
        "SELECT count(*), coalesce(sum(octet_length(row_to_json(c)::text)), 0)::bigint FROM "
        "(SELECT * FROM {table} WHERE {pred} ORDER BY {time}, {keytext} LIMIT %(batch_size)s) AS c"
    ).format(**names(target), pred=predicate(target))


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
        **names(target),
        pred=predicate(target),
    )


def snapshot(target: Target) -> list[sql.Composed]:
    """Copy the next window of candidates' (time, key) into a session temp table, and index it.

    Five statements, run in order in one transaction; the third's rowcount is the number of
    candidates in the window: at most %(window)s, oldest first, after the keyset
    (%(after_t)s, %(after_k)s). The sort keeps only the window (a bounded heap in
    %(work_mem)s, this transaction's): neither memory nor temp space grows with the backlog.
    """
    return [
        sql.SQL("SELECT set_config('work_mem', %(work_mem)s, true)").format(),
        sql.SQL("DROP TABLE IF EXISTS {snap}").format(snap=SNAPSHOT_TABLE),
        sql.SQL(
            "CREATE TEMP TABLE {name} AS SELECT {time} AS t, {keytext} AS k FROM {table} WHERE {pred} "
            "AND ({time}, {keytext}) > (%(after_t)s, %(after_k)s) ORDER BY 1, 2 LIMIT %(window)s"
        ).format(**names(target), name=sql.Identifier("runbook_candidates"), pred=predicate(target)),
        sql.SQL("CREATE INDEX ON {snap} (t, k)").format(snap=SNAPSHOT_TABLE),
        sql.SQL("ANALYZE {snap}").format(snap=SNAPSHOT_TABLE),
    ]


def snapshot_last() -> sql.Composed:
    """The last entry of the snapshot (t, k): where the next window starts."""
    return sql.SQL("SELECT t, k FROM {} ORDER BY t DESC, k DESC LIMIT 1").format(SNAPSHOT_TABLE)


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
        **names(target),
        pred_c=predicate(target, "c"),
        pred_u=predicate(target, "u"),
        changes=sql.Identifier(LEDGER_SCHEMA, "changes"),
        batches=sql.Identifier(LEDGER_SCHEMA, "batches"),
    )
