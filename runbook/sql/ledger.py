"""The ledger's SQL: its tables, their upgrades, and every read and write of them.

The ledger lives in its own schema, ``LEDGER_SCHEMA`` (``runbook.db.ledger`` runs these
statements and documents the tables). Every function returns a ``psycopg.sql.Composed``
(or ``SQL``) whose identifiers go through ``sql.Identifier`` and whose values are named
placeholders bound at execution time; nothing is executed here.
"""

from __future__ import annotations

import re

from psycopg import sql

__all__ = [
    "LEDGER_SCHEMA", "ddl", "records_ddl", "upgrade_ddl", "missing_columns", "tables_present", "schema_exists",
    "ddl_lock", "may_write", "grants_for", "run_for_update", "insert_run", "reopen_run", "last_batch",
    "synchronous_commit_on", "finish_run", "run_info", "recent_runs", "ledger_batches", "run_summary",
    "run_target", "insert_record", "first_seal", "ledger_present", "sweep_rate", "archived_batches", "stop_requests_ddl", "undos_of",
    "ledger_seals",
]  # fmt: skip

LEDGER_SCHEMA = "litellm_runbook"


def _t(name: str) -> sql.Identifier:
    return sql.Identifier(LEDGER_SCHEMA, name)


def ddl() -> list[sql.Composed]:
    """The statements that create the ledger (idempotent), in order: the schema, then
    ``runs``, ``batches``, ``changes`` and ``records``. No placeholders."""
    # changes.seq: an identity without CACHE on purpose. A change's number is drawn after its
    # row was locked, so two changes of one row are numbered in the order they happened;
    # numbers cached per session would break that across sessions.
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(LEDGER_SCHEMA)),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "run_id text PRIMARY KEY, kind text NOT NULL, target text NOT NULL, undoes_run_id text,"
            " started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz,"
            " operator jsonb, parameters jsonb, stop_reason text, rows_changed bigint, outcome jsonb, identity jsonb)"
        ).format(_t("runs")),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "run_id text NOT NULL REFERENCES {} (run_id), batch integer NOT NULL, rows_changed integer NOT NULL,"
            " committed_at timestamptz NOT NULL DEFAULT clock_timestamp(), archive_file text, archive_sha256 text,"
            " archive_rows integer, PRIMARY KEY (run_id, batch))"
        ).format(_t("batches"), _t("runs")),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "run_id text NOT NULL, batch integer NOT NULL, object_id text NOT NULL,"
            " previous_status text, new_status text NOT NULL, seq bigint GENERATED ALWAYS AS IDENTITY,"
            " PRIMARY KEY (run_id, batch, object_id))"
        ).format(_t("changes")),
        records_ddl(),
        *stop_requests_ddl(),
    ]


def stop_requests_ddl() -> list[sql.Composed]:
    """``stop_requests``: one row per request that a running sweep or undo stop
    (``python -m runbook stop``), insert-only to the reader and the sweeper; a run checks it
    between batches. Idempotent; no placeholders."""
    return [
        sql.SQL(
            # requested_at and requested_role are the server's: the roles may insert run_id and
            # requested_by only, so a request cannot be dated ahead or signed with another role.
            "CREATE TABLE IF NOT EXISTS {} (run_id text NOT NULL, requested_at timestamptz NOT NULL DEFAULT"
            " clock_timestamp(), requested_by jsonb, requested_role text NOT NULL DEFAULT session_user)"
        ).format(_t("stop_requests")),
        sql.SQL("CREATE INDEX IF NOT EXISTS stop_requests_run_id ON {} (run_id)").format(_t("stop_requests")),
    ]


def records_ddl() -> sql.Composed:
    """``records``: one row per sealed file (``runbook.audit.sealing``), insert-only to the
    sweeper; the first row for a file name is its seal, so a later row cannot replace it.
    Idempotent; no placeholders."""
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " record_file text NOT NULL, run_id text NOT NULL REFERENCES {} (run_id), sha256 text NOT NULL,"
        " sealed_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    ).format(_t("records"), _t("runs"))


def upgrade_ddl() -> dict[str, list[sql.Composed]]:
    """The statements that bring an older ledger's tables up to ``ddl()``, by missing column
    (the names ``missing_columns`` returns). No placeholders.

    ``changes.seq``: old rows are numbered in the order their batches were committed
    (a row lock orders two changes of one object, so commit order is their real order),
    then the column becomes the identity, continuing after the highest number.
    """
    changes = _t("changes")
    return {
        "batches.archive_sha256": [
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS archive_file text, ADD COLUMN IF NOT EXISTS archive_sha256 text,"
                " ADD COLUMN IF NOT EXISTS archive_rows integer"
            ).format(_t("batches"))
        ],
        "runs.identity": [sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS identity jsonb").format(_t("runs"))],
        "stop_requests.run_id": stop_requests_ddl(),
        "records.sha256": [records_ddl()],
        "changes.seq": [
            sql.SQL("ALTER TABLE {} ADD COLUMN seq bigint").format(changes),
            sql.SQL(
                "UPDATE {changes} AS c SET seq = o.n FROM (SELECT d.run_id, d.batch, d.object_id, row_number() OVER"
                " (ORDER BY b.committed_at NULLS FIRST, d.run_id, d.batch, d.object_id) AS n FROM {changes} AS d"
                " LEFT JOIN {batches} AS b ON b.run_id = d.run_id AND b.batch = d.batch) AS o"
                " WHERE (c.run_id, c.batch, c.object_id) = (o.run_id, o.batch, o.object_id)"
            ).format(changes=changes, batches=_t("batches")),
            sql.SQL("ALTER TABLE {} ALTER COLUMN seq SET NOT NULL").format(changes),
            sql.SQL("ALTER TABLE {} ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY").format(changes),
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence({name}, 'seq'), (SELECT coalesce(max(seq), 0) + 1 FROM {changes}), false)"
            ).format(name=sql.Literal(f"{LEDGER_SCHEMA}.changes"), changes=changes),
        ],
    }


def missing_columns() -> sql.SQL:
    """The columns of ``upgrade_ddl()`` the ledger lacks, one row each: name, in order.
    Placeholders: %(runs)s, %(records)s, %(changes)s, %(batches)s, %(stop_requests)s, the tables'
    ``schema.table`` names."""
    return sql.SQL(
        "SELECT w.name FROM (VALUES ('runs.identity', %(runs)s, 'identity'), ('records.sha256', %(records)s, 'sha256'),"
        " ('changes.seq', %(changes)s, 'seq'), ('batches.archive_sha256', %(batches)s, 'archive_sha256'),"
        " ('stop_requests.run_id', %(stop_requests)s, 'run_id'))"
        " AS w(name, rel, col) WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass(w.rel)"
        " AND a.attname = w.col AND NOT a.attisdropped) ORDER BY w.name"
    )


def tables_present() -> sql.SQL:
    """One row: how many of ``runs``, ``batches`` and ``changes`` exist in schema %(schema)s."""
    return sql.SQL(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(schema)s AND c.relname IN ('runs', 'batches', 'changes')"
    )


def schema_exists() -> sql.SQL:
    """One row (the column 1) when schema %(schema)s exists, none otherwise."""
    return sql.SQL("SELECT 1 FROM pg_namespace WHERE nspname = %(schema)s")


def ddl_lock() -> sql.SQL:
    """Take the transaction-level advisory lock named by the text %(name)s (the ledger's
    creation and upgrade take ``<schema>.ddl``): two first sweeps at once would race."""
    return sql.SQL("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(%(name)s, 0::bigint))")


def may_write() -> sql.SQL:
    """One row, one boolean: this role may use schema %(schema)s, read, insert and update
    %(runs)s, read and insert %(batches)s and %(changes)s (``schema.table`` names)."""
    return sql.SQL(
        "SELECT has_schema_privilege(%(schema)s, 'USAGE') AND has_table_privilege(%(runs)s, 'INSERT, UPDATE, SELECT')"
        " AND has_table_privilege(%(batches)s, 'INSERT, SELECT') AND has_table_privilege(%(changes)s, 'INSERT, SELECT')"
    )


# Key words PostgreSQL reserves: a role so named must be quoted where a role name goes.
_RESERVED = frozenset(
    "all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate collation"
    " column concurrently constraint create cross current_catalog current_date current_role current_schema"
    " current_time current_timestamp current_user default deferrable desc distinct do else end except false fetch"
    " for foreign freeze from full grant group having ilike in initially inner intersect into is isnull join lateral"
    " leading left like limit localtime localtimestamp natural not notnull null offset on only or order outer"
    " overlaps placing primary references returning right select session_user similar some symmetric system_user"
    " table tablesample then to trailing true union unique user using variadic verbose when where window with".split()
)


def _name(name: str) -> sql.Composable:
    """``name`` as PostgreSQL's ``quote_ident`` writes it: bare when it reads back as
    itself, double-quoted otherwise."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) and name not in _RESERVED:
        return sql.SQL(name)
    return sql.Identifier(name)


def grants_for(role: str) -> sql.Composed:
    """The three statements (one string, ``;``-separated) an owner runs so that ``role``
    can sweep with a ledger: the schema, USAGE on it, SELECT, INSERT, UPDATE on its tables.
    No placeholders: shown in messages, and run as they are."""
    schema, who = _name(LEDGER_SCHEMA), _name(role)
    return sql.SQL(
        "CREATE SCHEMA IF NOT EXISTS {schema}; GRANT USAGE ON SCHEMA {schema} TO {who}; "
        "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO {who}"
    ).format(schema=schema, who=who)


def run_for_update() -> sql.Composed:
    """Run %(run_id)s's ``runs`` row, locked: kind, target, identity."""
    return sql.SQL("SELECT kind, target, identity FROM {} WHERE run_id = %(run_id)s FOR UPDATE").format(_t("runs"))


def insert_run() -> sql.Composed:
    """A new ``runs`` row. Placeholders: %(run_id)s, %(kind)s, %(target)s, %(undoes_run_id)s,
    and the JSON texts %(operator)s, %(parameters)s, %(identity)s."""
    return sql.SQL(
        "INSERT INTO {} (run_id, kind, target, undoes_run_id, operator, parameters, identity)"
        " VALUES (%(run_id)s, %(kind)s, %(target)s, %(undoes_run_id)s, %(operator)s, %(parameters)s, %(identity)s)"
    ).format(_t("runs"))


def reopen_run() -> sql.Composed:
    """Reopen run %(run_id)s's ``runs`` row (``finished_at`` back to NULL): it resumes."""
    return sql.SQL("UPDATE {} SET finished_at = NULL WHERE run_id = %(run_id)s").format(_t("runs"))


def last_batch() -> sql.Composed:
    """One row: the highest batch number run %(run_id)s committed (0: none)."""
    return sql.SQL("SELECT coalesce(max(batch), 0) FROM {} WHERE run_id = %(run_id)s").format(_t("batches"))


def synchronous_commit_on() -> sql.SQL:
    """This transaction commits durably whatever the role's or database's
    ``synchronous_commit``. No placeholders."""
    return sql.SQL("SELECT pg_catalog.set_config('synchronous_commit', 'on', true)")


def finish_run() -> sql.Composed:
    """Close run %(run_id)s's ``runs`` row: finished now, %(stop_reason)s, the JSON text
    %(outcome)s, and ``rows_changed`` summed from its committed batches."""
    return sql.SQL(
        "UPDATE {runs} SET finished_at = clock_timestamp(), stop_reason = %(stop_reason)s, outcome = %(outcome)s,"
        " rows_changed = (SELECT coalesce(sum(rows_changed), 0) FROM {batches} WHERE run_id = %(run_id)s)"
        " WHERE run_id = %(run_id)s"
    ).format(runs=_t("runs"), batches=_t("batches"))


def run_info() -> sql.Composed:
    """Run %(run_id)s's ``runs`` row: run_id, kind, target, undoes_run_id, stop_reason, rows_changed,
    and the catalogue's target it ran (``identity->>'rule'``; NULL: the default target)."""
    return sql.SQL(
        # to_jsonb(r): a ledger from before runs.identity existed still answers (NULL).
        "SELECT run_id, kind, target, undoes_run_id, stop_reason, rows_changed, to_jsonb(r)->'identity'->>'rule'"
        " FROM {} AS r WHERE run_id = %(run_id)s"
    ).format(_t("runs"))


def recent_runs() -> sql.Composed:
    """The newest %(limit)s sweep runs, newest first: run_id, started_at (naive UTC),
    stop_reason, rows_changed, and the ids of the undo runs that undid it (``, ``-joined)."""
    return sql.SQL(
        "SELECT r.run_id, r.started_at AT TIME ZONE 'UTC', r.stop_reason, r.rows_changed,"
        " (SELECT string_agg(u.run_id, ', ') FROM {runs} u WHERE u.undoes_run_id = r.run_id)"
        " FROM {runs} r WHERE r.kind = 'sweep' ORDER BY r.started_at DESC LIMIT %(limit)s"
    ).format(runs=_t("runs"))


def ledger_present() -> sql.Composed:
    """One row: whether the ledger's ``runs`` table exists (a dry run never creates it)."""
    return sql.SQL("SELECT to_regclass({}) IS NOT NULL").format(sql.Literal(f"{LEDGER_SCHEMA}.runs"))


def sweep_rate() -> sql.Composed:
    """One row: rows changed and seconds taken by the finished sweeps of table %(target)s
    (``schema.table``) that changed any row; NULLs when there were none."""
    return sql.SQL(
        "SELECT sum(rows_changed), sum(extract(epoch FROM finished_at - started_at)) FROM {}"
        " WHERE kind = 'sweep' AND target = %(target)s AND finished_at IS NOT NULL AND rows_changed > 0"
    ).format(_t("runs"))


def undos_of() -> sql.Composed:
    """The undo runs of run %(run_id)s, oldest first: run_id, stop_reason."""
    return sql.SQL("SELECT run_id, stop_reason FROM {} WHERE undoes_run_id = %(run_id)s ORDER BY started_at").format(_t("runs"))


def archived_batches() -> sql.Composed:
    """The committed batches of run %(run_id)s, newest first: batch, rows_changed,
    archive_file, archive_sha256, archive_rows (NULLs for a batch written without an archive)."""
    return sql.SQL(
        "SELECT batch, rows_changed, archive_file, archive_sha256, archive_rows FROM {} WHERE run_id = %(run_id)s"
        " ORDER BY batch DESC"
    ).format(_t("batches"))


def ledger_batches() -> sql.Composed:
    """The batches the ledger holds for run %(run_id)s from number %(first_batch)s on:
    batch, rows_changed."""
    return sql.SQL("SELECT batch, rows_changed FROM {} WHERE run_id = %(run_id)s AND batch >= %(first_batch)s ORDER BY batch").format(
        _t("batches")
    )


def run_summary() -> sql.Composed:
    """The ledger's account of run %(run_id)s: kind, target, stop_reason, rows_changed,
    finished (a boolean), its committed batches' count and their rows changed."""
    return sql.SQL(
        "SELECT r.kind, r.target, r.stop_reason, r.rows_changed, r.finished_at IS NOT NULL,"
        " (SELECT count(*) FROM {batches} b WHERE b.run_id = r.run_id),"
        " (SELECT coalesce(sum(b.rows_changed), 0) FROM {batches} b WHERE b.run_id = r.run_id)"
        " FROM {runs} r WHERE r.run_id = %(run_id)s"
    ).format(runs=_t("runs"), batches=_t("batches"))


def run_target() -> sql.Composed:
    """Run %(run_id)s's target (``schema.table``)."""
    return sql.SQL("SELECT target FROM {} WHERE run_id = %(run_id)s").format(_t("runs"))


def insert_record() -> sql.Composed:
    """Add the checksum %(sha256)s of the sealed file %(record_file)s to ``records``, when
    run %(run_id)s has a ``runs`` row (rowcount 1; 0 without one)."""
    return sql.SQL(
        "INSERT INTO {records} (record_file, run_id, sha256) SELECT %(record_file)s, run_id, %(sha256)s FROM {runs}"
        " WHERE run_id = %(run_id)s"
    ).format(records=_t("records"), runs=_t("runs"))


def first_seal() -> sql.Composed:
    """The seal of file %(record_file)s: the sha256 of the first ``records`` row for that name."""
    return sql.SQL("SELECT sha256 FROM {} WHERE record_file = %(record_file)s ORDER BY seq LIMIT 1").format(_t("records"))


def ledger_seals() -> sql.Composed:
    """Every file the ledger seals, one row per file name, by name: record_file, and the
    run_id, sha256 and sealed_at of its first ``records`` row (its seal). No placeholders."""
    return sql.SQL(
        "SELECT DISTINCT ON (record_file) record_file, run_id, sha256, sealed_at FROM {} ORDER BY record_file, seq"
    ).format(_t("records"))
