"""Delete and clear: the batch that archives and removes rows, and the batch that puts them back.

A delete or clear batch is two statements in one transaction (``runbook.ops.rounds``):
``archive_rows`` locks the batch's rows still candidates (``FOR UPDATE SKIP LOCKED``, the
rule re-checked on the locked version) and returns them as archive lines; the lines are
written to disk and fsynced (``runbook.audit.archive``); then ``delete_batch`` or
``clear_batch`` removes exactly those locked rows (by ctid: a locked row cannot move) and
inserts the batch's ledger row naming the archive file and its sha256, in one statement.
Undo reads the files the ledger names and runs ``reinsert`` or ``restore_payloads``.

Every function returns a ``psycopg.sql.Composed`` (identifiers through ``sql.Identifier``,
values as named placeholders); nothing is executed here.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from ..rules.target import Target
from .candidates import EMPTY, key_match, predicate, table
from .ledger import LEDGER_SCHEMA

__all__ = [
    "SQL_NULL_KEY", "archive_rows", "delete_batch", "clear_batch", "reinsert", "restore_payloads", "restorable",
]  # fmt: skip

SQL_NULL_KEY = "_sql_null"  # must equal runbook.audit.archive.SQL_NULL_KEY (a test checks)
_WAL = sql.SQL("pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %(wal_start)s::pg_lsn)::bigint")


def _batches() -> sql.Identifier:
    return sql.Identifier(LEDGER_SCHEMA, "batches")


def _line(json_columns: Sequence[str]) -> sql.Composable:
    """A row of ``c`` as one archive line: ``row_to_json(c)`` (columns in table order; cheaper
    than building a jsonb first), plus the json/jsonb columns that are SQL NULL under
    ``_sql_null`` (only when there are any: spliced in before the closing brace)."""
    if not json_columns:
        return sql.SQL("row_to_json(c)::text")
    nulls = sql.SQL(", ").join(
        sql.SQL("CASE WHEN {} IS NULL THEN {} END").format(sql.Identifier("c", col), sql.Literal(col)) for col in json_columns
    )
    any_null = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier("c", col)) for col in json_columns)
    return sql.SQL(
        "CASE WHEN {any_null} THEN left(row_to_json(c)::text, -1) || {key} || "
        "array_to_json(array_remove(ARRAY[{nulls}], NULL))::text || '}}' ELSE row_to_json(c)::text END"
    ).format(any_null=any_null, key=sql.Literal(f',"{SQL_NULL_KEY}":'), nulls=nulls)


def archive_rows(target: Target, json_columns: Sequence[str], lines: bool = True) -> sql.Composed:
    """Lock the rows of %(ids)s (``key_text`` values) that are still candidates, skipping
    rows other sessions hold, and return them in one row: their ctids (a ``tid[]`` as text),
    their archive lines joined by newlines ('' without ``lines``: archive=False),
    and how many. Placeholders: the predicate's and %(ids)s. ``json_columns``: the table's
    json/jsonb columns (``_line``)."""
    return sql.SQL(
        "WITH locked AS (SELECT c.ctid AS tid, {line} AS line FROM {table} AS c "
        "WHERE {match} AND {pred} FOR UPDATE OF c SKIP LOCKED) "
        # No ORDER BY: sorting a batch's lines (megabytes) spilled to disk at the default
        # work_mem (measured, bench/RESULTS.md); they come in the primary key's order.
        "SELECT coalesce(array_agg(tid), '{{}}')::text, coalesce(string_agg(line, E'\\n'), ''), count(*) FROM locked"
    ).format(
        line=_line(json_columns) if lines else sql.SQL("''"), table=table(target),
        match=key_match(target, "c"), pred=predicate(target, "c"),
    )  # fmt: skip


def _ledgered(work: sql.Composable) -> sql.Composed:
    """``work`` (a data-modifying CTE named ``done``) and the batch's ledger row, one statement."""
    return sql.SQL(
        "WITH done AS ({work}) "
        "INSERT INTO {batches} (run_id, batch, rows_changed, archive_file, archive_sha256, archive_rows) "
        "SELECT %(run_id)s, %(batch)s, count(*), %(archive_file)s, %(archive_sha256)s, %(archive_rows)s FROM done "
        "RETURNING rows_changed, {wal}"
    ).format(work=work, batches=_batches(), wal=_WAL)


def delete_batch(target: Target) -> sql.Composed:
    """Delete the rows at %(tids)s (the ``tid[]`` text ``archive_rows`` returned, in this
    transaction) and insert batch %(batch)s of run %(run_id)s with its archive file
    %(archive_file)s, %(archive_sha256)s and %(archive_rows)s (NULLs without an archive).
    Returns one row: rows deleted, WAL bytes since %(wal_start)s."""
    return _ledgered(
        sql.SQL("DELETE FROM {} WHERE ctid = ANY(%(tids)s::tid[]) RETURNING 1").format(table(target))
    )


def clear_batch(target: Target) -> sql.Composed:
    """As ``delete_batch``, but set each payload column of those rows that is not NULL to
    ``'{}'`` (LiteLLM's empty value); the rows stay. Returns rows cleared, WAL bytes."""
    sets = sql.SQL(", ").join(
        sql.SQL("{col} = CASE WHEN {col} IS NULL THEN NULL ELSE {empty} END").format(col=sql.Identifier(c), empty=EMPTY)
        for c in target.payload_columns
    )
    return _ledgered(
        sql.SQL("UPDATE {} SET {} WHERE ctid = ANY(%(tids)s::tid[]) RETURNING 1").format(table(target), sets)
    )


def _undo_ledgered(work: sql.Composable) -> sql.Composed:
    return sql.SQL(
        "WITH lines AS (SELECT l::jsonb AS j FROM unnest(%(lines)s::text[]) AS l), done AS ({work}) "
        "INSERT INTO {batches} (run_id, batch, rows_changed) SELECT %(run_id)s, %(batch)s, count(*) FROM done "
        "RETURNING rows_changed"
    ).format(work=work, batches=_batches())


def _sql_null(column: str) -> sql.Composed:
    return sql.SQL("coalesce(lines.j->{key} ? {col}, false)").format(key=sql.Literal(SQL_NULL_KEY), col=sql.Literal(column))


def reinsert(target: Target, columns: Sequence[tuple[str, str]]) -> sql.Composed:
    """Insert the archived rows of %(lines)s (archive lines) back, each exactly as it was;
    a row whose key (or another unique value) exists again is left alone. Inserts
    batch %(batch)s of undo run %(run_id)s in the same statement. ``columns``: the table's
    (name, type) pairs, generated ones left out. Returns one row: rows inserted."""
    exprs: list[sql.Composable] = []
    for name, type_ in columns:
        if type_ in ("json", "jsonb"):
            # jsonb_populate_record reads a JSON null as SQL NULL: take the value as archived.
            exprs.append(
                sql.SQL("CASE WHEN {n} THEN NULL ELSE (lines.j->{col})::{t} END").format(
                    n=_sql_null(name), col=sql.Literal(name), t=sql.SQL(type_)
                )
            )
        else:
            exprs.append(sql.Identifier("r", name))
    work = sql.SQL(
        "INSERT INTO {table} ({cols}) OVERRIDING SYSTEM VALUE SELECT {exprs} FROM lines, "
        "LATERAL jsonb_populate_record(NULL::{table}, lines.j) AS r ON CONFLICT DO NOTHING RETURNING 1"
    ).format(
        table=table(target), cols=sql.SQL(", ").join(sql.Identifier(n) for n, _ in columns),
        exprs=sql.SQL(", ").join(exprs),
    )  # fmt: skip
    return _undo_ledgered(work)


def _keys_match(target: Target) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("u.{} = lines.j->>{}").format(sql.Identifier(k), sql.Literal(k)) for k in target.key_columns
    )


def _restorable_payload(col: str) -> sql.Composed:
    return sql.SQL("(u.{c} = {empty} AND lines.j->{n} <> {empty} AND NOT {null})").format(
        c=sql.Identifier(col), empty=EMPTY, n=sql.Literal(col), null=_sql_null(col)
    )


def restorable(target: Target) -> sql.Composed:
    """How many of the archived rows %(lines)s an undo would put back now (``reinsert``: whose
    key is absent; ``restore_payloads``: whose cleared columns still hold ``'{}'``), reading
    only. One row, one count."""
    if target.action == "delete":
        return sql.SQL(
            "WITH lines AS (SELECT l::jsonb AS j FROM unnest(%(lines)s::text[]) AS l) "
            "SELECT count(*) FROM lines WHERE NOT EXISTS (SELECT 1 FROM {table} AS u WHERE {keys})"
        ).format(table=table(target), keys=_keys_match(target))
    return sql.SQL(
        "WITH lines AS (SELECT l::jsonb AS j FROM unnest(%(lines)s::text[]) AS l) "
        "SELECT count(*) FROM {table} AS u JOIN lines ON {keys} WHERE {any}"
    ).format(
        table=table(target), keys=_keys_match(target),
        any=sql.SQL(" OR ").join(_restorable_payload(c) for c in target.payload_columns),
    )  # fmt: skip


def restore_payloads(target: Target) -> sql.Composed:
    """Put the archived payload values of %(lines)s back into the columns the clear emptied,
    where they still hold ``'{}'`` (a column written since is left alone); batch %(batch)s
    of undo run %(run_id)s in the same statement. Returns one row: rows restored."""

    sets = sql.SQL(", ").join(
        sql.SQL("{c} = CASE WHEN {ok} THEN lines.j->{n} ELSE u.{c} END").format(
            c=sql.Identifier(col), ok=_restorable_payload(col), n=sql.Literal(col)
        )
        for col in target.payload_columns
    )
    work = sql.SQL("UPDATE {table} AS u SET {sets} FROM lines WHERE {keys} AND ({any}) RETURNING 1").format(
        table=table(target), sets=sets, keys=_keys_match(target),
        any=sql.SQL(" OR ").join(_restorable_payload(c) for c in target.payload_columns),
    )
    return _undo_ledgered(work)

