"""The ledger: what every live run changed, written in the same statement as the change.

Lives in its own schema, ``litellm_runbook``, beside LiteLLM's tables and never in them:

    runs     one row per live sweep or undo: who, what, parameters, outcome, and the
             identity a resume of its run id must match (``start_run``)
    batches  one row per committed batch: run, number, rows changed, commit time
    changes  one row per changed row: run, batch, object id, previous and new status,
             and ``seq``, an identity: the order of every change across runs (undo
             restores a row only when the undone run's change is its latest one)

``changes`` is keyed (run_id, batch, object_id): a batch's rows land together at the
right edge of the index. Keyed by object id first, each insert hit a random index page,
and after every checkpoint each such page costs a full-page image in the WAL: that
ledger made the 300K-row benchmark sweep 10% slower (2.3 s of 23; bench/RESULTS.md).

A batch's UPDATE, its ``changes`` rows and its ``batches`` row are one SQL statement
(``statements.batch_update`` with ``ledger=True``), so they exist together or not at all,
whatever happens to the process. ``ensure()`` creates the schema on first use; a role
that may not create or write it gets LedgerUnavailableError saying what to grant, and
the sweep does not start. A ledger an older version created (without ``runs.identity``
or ``changes.seq``) is upgraded by ``ensure()`` once, under the same lock; its old changes
get ``seq`` in the order their batches were committed.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

from ..errors import LedgerUnavailableError, ParameterError
from .transactions import Conn
from ..sql.statements import LEDGER_SCHEMA as SCHEMA

__all__ = [
    "SCHEMA", "ensure", "ddl", "upgrade_ddl", "start_run", "finish_run", "run_info", "recent_runs", "grants_for",
    "IDENTITY_KEYS", "missing_columns",
]  # fmt: skip

# What a resumed run id must match (start_run): a run is one kind of work on one target.
IDENTITY_KEYS = ("kind", "target", "cutoff", "stale_after_days", "undoes_run_id", "session_user", "current_user", "os_user")


def _t(name: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, name)


def ddl() -> list[sql.Composed]:
    """The statements that create the ledger (idempotent)."""
    # changes.seq: an identity without CACHE on purpose. A change's number is drawn after its
    # row was locked, so two changes of one row are numbered in the order they happened;
    # numbers cached per session would break that across sessions.
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "run_id text PRIMARY KEY, kind text NOT NULL, target text NOT NULL, undoes_run_id text,"
            " started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz,"
            " operator jsonb, parameters jsonb, stop_reason text, rows_changed bigint, outcome jsonb, identity jsonb)"
        ).format(_t("runs")),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "run_id text NOT NULL REFERENCES {} (run_id), batch integer NOT NULL, rows_changed integer NOT NULL,"
            " committed_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (run_id, batch))"
        ).format(_t("batches"), _t("runs")),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "run_id text NOT NULL, batch integer NOT NULL, object_id text NOT NULL,"
            " previous_status text, new_status text NOT NULL, seq bigint GENERATED ALWAYS AS IDENTITY,"
            " PRIMARY KEY (run_id, batch, object_id))"
        ).format(_t("changes")),
        _records_ddl(),
    ]


def _records_ddl() -> sql.Composed:
    # records: one row per sealed file (runbook.sealing), insert-only to the sweeper; the
    # first row for a file name is its seal, so a later row cannot replace it.
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " record_file text NOT NULL, run_id text NOT NULL REFERENCES {} (run_id), sha256 text NOT NULL,"
        " sealed_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    ).format(_t("records"), _t("runs"))


def upgrade_ddl() -> dict[str, list[sql.Composed]]:
    """The statements that bring an older ledger's tables up to ``ddl()``, by missing column.

    ``changes.seq``: old rows are numbered in the order their batches were committed
    (a row lock orders two changes of one object, so commit order is their real order),
    then the column becomes the identity, continuing after the highest number.
    """
    changes = _t("changes")
    return {
        "runs.identity": [sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS identity jsonb").format(_t("runs"))],
        "records.sha256": [_records_ddl()],
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
            ).format(name=sql.Literal(f"{SCHEMA}.changes"), changes=changes),
        ],
    }


def missing_columns(conn: Conn) -> list[str]:
    """The columns of ``upgrade_ddl()`` this ledger lacks (``ensure()`` adds them). Reads only."""
    rows = conn.execute(
        "SELECT w.name FROM (VALUES ('runs.identity', %(runs)s, 'identity'), ('records.sha256', %(records)s, 'sha256'),"
        " ('changes.seq', %(changes)s, 'seq'))"
        " AS w(name, rel, col) WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass(w.rel)"
        " AND a.attname = w.col AND NOT a.attisdropped) ORDER BY w.name",
        {"runs": f"{SCHEMA}.runs", "changes": f"{SCHEMA}.changes", "records": f"{SCHEMA}.records"},
    ).fetchall()
    return [str(r[0]) for r in rows]


def grants_for(role: str) -> str:
    """The statements an owner runs so that ``role`` can sweep with a ledger."""
    return (
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}; GRANT USAGE ON SCHEMA {SCHEMA} TO {role}; "
        f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {SCHEMA} TO {role}"
    )


def ensure(conn: Conn) -> None:
    """Create the ledger if missing, upgrade an older one, and check this role can write it.

    Writes the schema and tables on first use, and the columns an older version's ledger
    lacks (``upgrade_ddl``). Raises LedgerUnavailableError, naming the grants to ask for,
    when the role can do neither, or saying who must upgrade a ledger it may not alter.
    """
    role = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
    present = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname IN ('runs', 'batches', 'changes')",
        [SCHEMA],
    ).fetchone()
    if not present or present[0] < 3:
        try:
            with conn.transaction():
                # Two first sweeps at once would race to create the schema.
                conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(%s, 0::bigint))", [f"{SCHEMA}.ddl"])
                schema_exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [SCHEMA]).fetchone()
                # CREATE SCHEMA checks the CREATE privilege even when the schema exists,
                # and a ledger owner given the schema by the database owner lacks it.
                for statement in ddl()[1 if schema_exists else 0 :]:
                    conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise LedgerUnavailableError(
                f"role {role} cannot create the ledger schema {SCHEMA} ({exc.diag.message_primary}); "
                f"a sweep never runs without its ledger. Ask an owner to run: {grants_for(role)}"
            ) from None
    if missing_columns(conn):
        try:
            with conn.transaction():
                conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(%s, 0::bigint))", [f"{SCHEMA}.ddl"])
                upgrades = upgrade_ddl()
                for name in missing_columns(conn):  # again, under the lock: another run may have upgraded it
                    for statement in upgrades[name]:
                        conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise LedgerUnavailableError(
                f"the ledger in schema {SCHEMA} was created by an older version of the runbook and role {role} may not "
                f"upgrade it ({exc.diag.message_primary}); a sweep never runs without its ledger. Ask the ledger's owner "
                "to run: python -m runbook ledger init"
            ) from None
    row = conn.execute(
        "SELECT has_schema_privilege(%(s)s, 'USAGE') AND has_table_privilege(%(runs)s, 'INSERT, UPDATE, SELECT')"
        " AND has_table_privilege(%(batches)s, 'INSERT, SELECT') AND has_table_privilege(%(changes)s, 'INSERT, SELECT')",
        {"s": SCHEMA, "runs": f"{SCHEMA}.runs", "batches": f"{SCHEMA}.batches", "changes": f"{SCHEMA}.changes"},
    ).fetchone()
    if not row or not row[0]:
        raise LedgerUnavailableError(
            f"role {role} may not write the ledger in schema {SCHEMA}; a sweep never runs without its ledger. "
            f"Ask an owner to run: {grants_for(role)}"
        )


def start_run(
    conn: Conn, *, run_id: str, kind: str, target: str, operator: dict[str, Any], parameters: dict[str, Any],
    identity: dict[str, Any], undoes_run_id: str | None = None,
) -> int:  # fmt: skip
    """Register (or resume) a run; return the number its next batch gets.

    Writes the run's ``runs`` row, or reopens it (``finished_at`` back to NULL). Re-using a
    run id continues that run (after a crash, say): its batches keep counting. ``identity``
    (``IDENTITY_KEYS``) must then equal the recorded one: a run id names one kind of work
    on one target, with one cutoff, one undone run, one database role and OS user. Raises
    ParameterError naming run_id, writing nothing, when it differs or was never recorded.
    """
    with conn.transaction():
        existing = conn.execute(
            sql.SQL("SELECT kind, target, identity FROM {} WHERE run_id = %s FOR UPDATE").format(_t("runs")), [run_id]
        ).fetchone()
        if existing is None:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (run_id, kind, target, undoes_run_id, operator, parameters, identity)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                ).format(_t("runs")),
                [run_id, kind, target, undoes_run_id, json.dumps(operator), json.dumps(parameters, default=str),
                 json.dumps(identity, default=str)],
            )  # fmt: skip
            return 1
        recorded = existing[2]
        if recorded is None:
            raise ParameterError(
                "run_id", run_id, f"a new id: it names a {existing[0]} run on {existing[1]} recorded by an older version "
                "of the runbook, without the identity a resumed run must match",
            )  # fmt: skip
        wanted = json.loads(json.dumps(identity, default=str))
        differ = [k for k in IDENTITY_KEYS if recorded.get(k) != wanted.get(k)]
        if differ:
            was = ", ".join(f"{k}={recorded.get(k)!r}" for k in differ)
            now = ", ".join(f"{k}={wanted.get(k)!r}" for k in differ)
            raise ParameterError(
                "run_id", run_id, f"a new id: it names a {existing[0]} run on {existing[1]} in the ledger with {was}, "
                f"and this run has {now}; a run id is resumed only with the same kind, target, cutoff, undone run, "
                "database role and OS user",
            )  # fmt: skip
        conn.execute(sql.SQL("UPDATE {} SET finished_at = NULL WHERE run_id = %s").format(_t("runs")), [run_id])
        last = conn.execute(
            sql.SQL("SELECT coalesce(max(batch), 0) FROM {} WHERE run_id = %s").format(_t("batches")), [run_id]
        ).fetchone()
        return int(last[0]) + 1 if last else 1


def finish_run(conn: Conn, run_id: str, stop_reason: str, outcome: dict[str, Any]) -> None:
    """Record how the run ended; rows_changed is summed from the committed batches.

    Committed durably whatever the role's or database's ``synchronous_commit``: its WAL
    flush also flushes the run's asynchronously committed batches before anyone reads it."""
    with conn.transaction():
        conn.execute("SELECT pg_catalog.set_config('synchronous_commit', 'on', true)")
        conn.execute(
            sql.SQL(
                "UPDATE {runs} SET finished_at = clock_timestamp(), stop_reason = %s, outcome = %s,"
                " rows_changed = (SELECT coalesce(sum(rows_changed), 0) FROM {batches} WHERE run_id = %s)"
                " WHERE run_id = %s"
            ).format(runs=_t("runs"), batches=_t("batches")),
            [stop_reason, json.dumps(outcome, default=str), run_id, run_id],
        )


def _exists(conn: Conn) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{SCHEMA}.runs"]).fetchone() == (True,)


def run_info(conn: Conn, run_id: str) -> dict[str, Any] | None:
    """The ledger's row for ``run_id``, or None."""
    if not _exists(conn):
        return None
    row = conn.execute(
        sql.SQL("SELECT run_id, kind, target, undoes_run_id, stop_reason, rows_changed FROM {} WHERE run_id = %s").format(
            _t("runs")
        ),
        [run_id],
    ).fetchone()
    if row is None:
        return None
    keys = ("run_id", "kind", "target", "undoes_run_id", "stop_reason", "rows_changed")
    return dict(zip(keys, row, strict=True))


def recent_runs(conn: Conn, limit: int = 20) -> list[dict[str, Any]]:
    """The newest sweep runs (with the undo runs that undid them); [] without a ledger."""
    if not _exists(conn):
        return []
    rows = conn.execute(
        sql.SQL(
            "SELECT r.run_id, r.started_at AT TIME ZONE 'UTC', r.stop_reason, r.rows_changed,"
            " (SELECT string_agg(u.run_id, ', ') FROM {runs} u WHERE u.undoes_run_id = r.run_id)"
            " FROM {runs} r WHERE r.kind = 'sweep' ORDER BY r.started_at DESC LIMIT %s"
        ).format(runs=_t("runs")),
        [limit],
    ).fetchall()
    keys = ("run_id", "started_at", "stop_reason", "rows_changed", "undone_by")
    return [dict(zip(keys, r, strict=True)) for r in rows]
