"""Catalog and session reads: the checks before a run, the server's clock and identity,
the target's lock holder, health signals, and the settings of a batch's transaction.

Every function returns a ``psycopg.sql.SQL`` (no identifiers: the catalog is named in
full) whose values are named placeholders bound at execution time; nothing is executed
here. Functions the runbook calls unqualified resolve in ``pg_catalog`` only: every
connection pins ``search_path`` (``runbook.db.connect``), and ``read_only_pinned`` pins it
again per transaction where the connection could not.
"""

from __future__ import annotations

from psycopg import sql

__all__ = [
    "read_only_pinned", "run_start", "clock", "now_utc", "table_oid", "table_columns", "column_types", "time_index", "owns_table", "has_children", "privilege", "write_privileges", "batch_settings",
    "current_user", "roles", "server_identity", "system_identifier", "max_wal_size", "relation_exists",
    "try_advisory_lock", "advisory_unlock", "lock_holder", "sessions_of_run", "terminate_backend",
    "health_visibility", "health_signals",
]  # fmt: skip


def read_only_pinned() -> sql.SQL:
    """Two statements, one round trip (no parameters: the simple query protocol): this
    transaction is READ ONLY and its ``search_path`` is pg_catalog, then pg_temp (last,
    so a temp object never shadows a built-in); the runbook names all else with its schema."""
    return sql.SQL("SET TRANSACTION READ ONLY; SET LOCAL search_path TO pg_catalog, pg_temp")


def run_start() -> sql.SQL:
    """The server's clock and its ``wal_buffers`` in bytes, read once when a sweep begins."""
    return sql.SQL("SELECT now(), pg_size_bytes(current_setting('wal_buffers'))")


def clock() -> sql.SQL:
    """One row: the server's clock now (``clock_timestamp()``, a timestamptz)."""
    return sql.SQL("SELECT clock_timestamp()")


def now_utc() -> sql.SQL:
    """One row: the server's clock (``statement_timestamp()``) as a naive UTC ``timestamp``."""
    return sql.SQL("SELECT (statement_timestamp() AT TIME ZONE 'UTC')")


def session_timezone() -> sql.SQL:
    """One row: this session's TimeZone (the server's, database's or role's default unless
    the client set one, as LiteLLM's does not) and its offset from UTC now, in seconds."""
    return sql.SQL("SELECT current_setting('TimeZone'), extract(timezone FROM statement_timestamp())::int")


def table_stats() -> sql.SQL:
    """One row for table %(table)s in schema %(schema)s: its heap bytes, its TOAST bytes
    (with the TOAST index), dead tuples and the latest VACUUM or autovacuum
    (``pg_stat_all_tables``; NULL when never)."""
    return sql.SQL(
        "SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0),"
        " coalesce(s.n_dead_tup, 0), greatest(s.last_vacuum, s.last_autovacuum)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid"
        " WHERE n.nspname = %(schema)s AND c.relname = %(table)s"
    )


def table_oid() -> sql.SQL:
    """The oid of table %(table)s in schema %(schema)s; no row when there is none."""
    return sql.SQL(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(schema)s AND c.relname = %(table)s"
    )


def table_columns() -> sql.SQL:
    """The column names (attname) of the relation with oid %(oid)s, dropped ones left out."""
    return sql.SQL("SELECT attname FROM pg_attribute WHERE attrelid = %(oid)s AND attnum > 0 AND NOT attisdropped")


def column_types() -> sql.SQL:
    """The columns of the relation with oid %(oid)s in order, dropped ones left out: name,
    type as SQL writes it (``format_type``), whether it is generated (never inserted)."""
    return sql.SQL(
        "SELECT attname, format_type(atttypid, atttypmod), attgenerated <> '' FROM pg_attribute"
        " WHERE attrelid = %(oid)s AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    )


def time_index() -> sql.SQL:
    """One row: how many valid indexes of table %(table)s in schema %(schema)s lead with
    column %(column)s (a search by age can use them)."""
    return sql.SQL(
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND a.attname = %(column)s AND i.indisvalid"
    )


def has_children() -> sql.SQL:
    """One row, one boolean: the relation with oid %(oid)s has inheritance children or
    partitions (a row of a child is not a row of the parent's type: its archive would lack columns)."""
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = %(oid)s)")


def owns_table() -> sql.SQL:
    """One row, one boolean: this role owns (is a member of the owner of) table %(table)s in
    schema %(schema)s, as VACUUM requires (it skips a table it may not vacuum, with a warning only)."""
    return sql.SQL(
        "SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(schema)s AND c.relname = %(table)s"
    )


def privilege() -> sql.SQL:
    """One row, one boolean: this role holds privilege %(privilege)s on table %(table)s
    (``schema.table`` as SQL would quote it), or on its column %(column)s when that is not NULL."""
    return sql.SQL(
        "SELECT CASE WHEN %(column)s::text IS NULL THEN has_table_privilege(%(table)s, %(privilege)s)"
        " ELSE has_column_privilege(%(table)s, %(column)s::text, %(privilege)s) END"
    )


def write_privileges() -> sql.SQL:
    """Whether this session may write the target, one row: in recovery (a standby),
    ``default_transaction_read_only`` ('on'/'off'), may UPDATE column %(column)s of
    table %(table)s (its ``schema.table`` name, quoted as SQL would), current_user, may
    create temporary tables in this database."""
    return sql.SQL(
        "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'),"
        " has_column_privilege(%(table)s, %(column)s, 'UPDATE'), current_user,"
        " has_database_privilege(current_database(), 'TEMPORARY')"
    )


def batch_settings() -> sql.SQL:
    """Set this transaction's ``lock_timeout`` to %(lock_timeout)s and ``statement_timeout``
    to %(statement_timeout)s (texts such as '500ms'), ``synchronous_commit`` off and
    ``extra_float_digits`` 3. One row: the first three settings as set, the server's WAL
    insert position (a ``pg_lsn``), then the fourth setting."""
    # extra_float_digits 3: a float archived by row_to_json is written exactly (shortest
    # round-trip form) whatever the role's setting, so a restored row equals the deleted one.
    return sql.SQL(
        "SELECT set_config('lock_timeout', %(lock_timeout)s, true), set_config('statement_timeout', %(statement_timeout)s, true),"
        " set_config('synchronous_commit', 'off', true), pg_current_wal_insert_lsn(), set_config('extra_float_digits', '3', true)"
    )


def current_user() -> sql.SQL:
    """One row: the role this session acts as (``current_user``)."""
    return sql.SQL("SELECT current_user")


def roles() -> sql.SQL:
    """One row: the role the session authenticated as (session_user) and acts as (current_user)."""
    return sql.SQL("SELECT session_user, current_user")


def server_identity() -> sql.SQL:
    """One row: server_version, the database's name, current_user, session_user."""
    return sql.SQL("SELECT current_setting('server_version'), current_database(), current_user, session_user")


def system_identifier() -> sql.SQL:
    """One row: the cluster's system identifier, as text (``pg_control_system()``, which
    unprivileged roles may be denied)."""
    return sql.SQL("SELECT system_identifier::text FROM pg_control_system()")


def max_wal_size() -> sql.SQL:
    """One row: the server's ``max_wal_size`` in bytes."""
    return sql.SQL("SELECT pg_size_bytes(current_setting('max_wal_size'))")


def relation_exists() -> sql.SQL:
    """One row, one boolean: the relation named %(name)s (``schema.table``) exists."""
    return sql.SQL("SELECT pg_catalog.to_regclass(%(name)s) IS NOT NULL")


def try_advisory_lock() -> sql.SQL:
    """Take the session advisory lock %(key)s (a bigint) if free; one row: whether it was."""
    return sql.SQL("SELECT pg_catalog.pg_try_advisory_lock(%(key)s)")


def advisory_unlock() -> sql.SQL:
    """Release the session advisory lock %(key)s (a bigint); one row: whether it was held."""
    return sql.SQL("SELECT pg_catalog.pg_advisory_unlock(%(key)s)")


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


def sessions_of_run() -> sql.SQL:
    """The pids of this database's sessions whose application name carries run %(run_id)s
    (``litellm-runbook/<kind>/<run id>[/...]``), other than this one."""
    return sql.SQL(
        "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = pg_catalog.current_database()"
        " AND pid <> pg_catalog.pg_backend_pid() AND application_name LIKE 'litellm-runbook/%%'"
        " AND pg_catalog.split_part(application_name, '/', 3) = %(run_id)s"
    )


def terminate_backend() -> sql.SQL:
    """End the session of pid %(pid)s; one row: whether the signal was sent."""
    return sql.SQL("SELECT pg_catalog.pg_terminate_backend(%(pid)s)")


def health_visibility() -> sql.SQL:
    """One row: the current role, and whether it sees other roles' rows of the statistics
    views (``pg_read_all_stats``'s privileges: that role, pg_monitor, or superuser)."""
    return sql.SQL("SELECT current_user, pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')")


def health_signals() -> sql.SQL:
    """One row: WAL bytes the slowest standby has not replayed, sessions waiting on locks
    on table %(table)s (a regclass name), and whether a VACUUM of it runs that should
    pause a sweep begun at %(since)s (see ``runbook.db.health``; NULL: every VACUUM counts)."""
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
