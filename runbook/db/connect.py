"""Which database to work on, and connections to it. Credentials come from the environment only.

Resolution order:
1. ``DATABASE_URL`` (LiteLLM's own variable; Prisma-only query parameters such as
   ``schema`` and ``connection_limit`` are taken out, since libpq rejects them:
   ``schema`` names the schema of LiteLLM's tables, ``public`` without it, and
   ``pgbouncer=true`` marks a transaction-mode PgBouncer, where live runs are refused);
2. libpq's ``PG*`` variables (PGHOST, PGDATABASE, PGSERVICE, ...), when any is set;
3. the embedded default database (``runbook.db.embedded``), started if needed.

Every connection pins ``search_path`` to ``pg_catalog, pg_temp`` (LiteLLM's table is
always named with its schema), so a function or operator planted in another schema
can never stand in for a built-in one the runbook calls unqualified.

Nothing here ever prints, logs or returns a password: ``describe()`` gives
``user@host:port/dbname`` and errors are scrubbed of the password before they are raised.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
from psycopg import conninfo

from ..errors import DatabaseConfigError, ParameterError, PoolerError
from ..rules.target import _check_identifier
from .embedded import EmbeddedServer, default_home

__all__ = [
    "DEMO_DATABASE", "SEARCH_PATH", "Database", "resolve", "connect", "connect_like", "redact", "refuse_transaction_pooler",
]  # fmt: skip

DEMO_DATABASE = "litellm"
APPLICATION_NAME = "litellm-runbook"
CONNECT_TIMEOUT_S = 10  # libpq's connect_timeout of every connection the runbook opens

# Query parameters Prisma understands and libpq does not.
_PRISMA_ONLY = {"schema", "connection_limit", "pool_timeout", "pgbouncer", "statement_cache_size", "socket_timeout", "sslaccept", "sslidentity"}
# Built-ins first, the session's temp schema last (never first: a temp object must not
# shadow anything), nothing else: the runbook names every other object with its schema.
SEARCH_PATH = "pg_catalog, pg_temp"
_LIBPQ_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGSERVICEFILE")


@dataclass(frozen=True)
class Database:
    """Where to connect: a libpq DSN (may hold a password: never display it) and its origin."""

    dsn: str = field(repr=False)
    source: str  # "DATABASE_URL", "PG* environment" or "embedded"
    schema: str = "public"  # the schema of LiteLLM's tables (Prisma's ?schema=)
    pgbouncer: bool = False  # Prisma's ?pgbouncer=true: a transaction-mode PgBouncer

    def describe(self) -> str:
        """``user@host:port/dbname, schema S (source)``, without any secret."""
        pooler = ", through PgBouncer (pgbouncer=true)" if self.pgbouncer else ""
        return f"{redact(self.dsn)}, schema {self.schema}{pooler} ({self.source})"

    def __repr__(self) -> str:
        # What a notebook shows when `run.database` is displayed: never the DSN itself.
        return f"Database({self.describe()})"

    def __str__(self) -> str:
        return self.describe()


def _strip_prisma(url: str) -> tuple[str, dict[str, str]]:
    """The URL without Prisma's own query parameters, and those parameters."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        return url, {}
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in pairs if k not in _PRISMA_ONLY]
    # Not urlunsplit: it drops the "//" of an empty host (postgresql:///db?host=/socket).
    rest = f"?{urlencode(query)}" if query else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{rest}", {k: v for k, v in pairs if k in _PRISMA_ONLY}


def redact(dsn: str) -> str:
    """``user@host:port/dbname`` from a DSN or URL; the password and options are dropped."""
    try:
        info = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparseable connection string)"
    host = info.get("host") or os.environ.get("PGHOST") or "localhost"
    port = info.get("port") or os.environ.get("PGPORT") or "5432"
    user = info.get("user") or os.environ.get("PGUSER") or ""
    dbname = info.get("dbname") or os.environ.get("PGDATABASE") or user
    return f"{user}@{host}:{port}/{dbname}"


def _scrub(message: str, dsn: str) -> str:
    try:
        password = conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        password = None
    return _scrub_secret(message, password)


def _scrub_secret(message: str, password: object) -> str:
    secrets = [s for s in (password, os.environ.get("PGPASSWORD")) if s]
    for secret in secrets:
        message = message.replace(str(secret), "***")
    return message


def resolve(environ: dict[str, str] | None = None) -> Database:
    """Pick the database from the environment (see module docstring).

    Starting the embedded server writes below ``RUNBOOK_HOME``. Raises
    DatabaseConfigError when DATABASE_URL cannot be parsed or its ``schema`` option is
    not a plain SQL name.
    """
    env = os.environ if environ is None else environ
    url = env.get("DATABASE_URL", "").strip()
    if url:
        dsn, prisma = _strip_prisma(url)
        try:
            conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise DatabaseConfigError(
                "DATABASE_URL is not a valid PostgreSQL URL or DSN "
                "(expected postgresql://user@host:port/dbname; put the password in PGPASSWORD or ~/.pgpass)"
            ) from None
        if "://" in url and url.split("://", 1)[1].split("/", 1)[0].count("@") > 1:
            # libpq would read the part after the first '@' as the host and show it in
            # every error: the rest of the password. Nothing of the URL is echoed here.
            raise DatabaseConfigError(
                "DATABASE_URL has more than one '@' before the host: percent-encode '@' in the user or password "
                "as %40 (better: leave the password out of the URL and set PGPASSWORD or ~/.pgpass)"
            )
        schema = prisma.get("schema", "") or "public"
        try:
            _check_identifier("schema", schema)
        except ParameterError as exc:
            raise DatabaseConfigError(
                f"DATABASE_URL's schema option {schema!r} is not allowed: {exc.allowed}"
            ) from None
        pgbouncer = prisma.get("pgbouncer", "").strip().lower() in ("true", "1", "yes")
        return Database(dsn, "DATABASE_URL", schema, pgbouncer)
    if any(env.get(name) for name in _LIBPQ_ENV):
        return Database("", "PG* environment")
    server = EmbeddedServer(default_home())
    server.start()
    return Database(server.dsn(DEMO_DATABASE), "embedded")


# Connections opened through a transaction-mode PgBouncer (pgbouncer=true): live runs refuse them.
_POOLED: "weakref.WeakSet[psycopg.Connection[Any]]" = weakref.WeakSet()


def _pinned_options(dsn: str) -> str:
    """The DSN's (or PGOPTIONS') server options with ``search_path`` pinned after them."""
    try:
        given = conninfo.conninfo_to_dict(dsn).get("options")
    except psycopg.ProgrammingError:
        given = None
    given = given if given is not None else os.environ.get("PGOPTIONS", "")
    return _pin(str(given))


def _pin(options: str) -> str:
    """Server ``options`` with ``search_path`` pinned after them (once)."""
    pin = f"-c search_path={SEARCH_PATH.replace(' ', '')}"
    return options.strip() if options.strip().endswith(pin) else f"{options} {pin}".strip()


def connect(database: Database | None = None, *, purpose: str = "runbook") -> "psycopg.Connection[Any]":
    """An autocommit connection; every unit of work opens its own ``conn.transaction()``.

    Its ``search_path`` is ``SEARCH_PATH``: set at connection start (``options``, which
    helper connections copy), or, through PgBouncer (which refuses startup options),
    by ``db.transactions.read_only`` in each transaction. Raises DatabaseConfigError (password
    scrubbed) when the server cannot be reached.
    """
    database = database or resolve()
    # PgBouncer refuses startup options: there, read_only() pins search_path per transaction.
    dsn = database.dsn if database.pgbouncer else conninfo.make_conninfo(database.dsn, options=_pinned_options(database.dsn))
    try:
        conn = psycopg.connect(
            dsn, autocommit=True, application_name=f"{APPLICATION_NAME}/{purpose}", connect_timeout=CONNECT_TIMEOUT_S
        )
    except psycopg.OperationalError as exc:
        hint = ""
        if database.source == "embedded":
            hint = " (run `make demo` to create the demo database)"
        raise DatabaseConfigError(
            f"cannot connect to {database.describe()}: {_scrub(str(exc).strip(), database.dsn)}{hint}"
        ) from None
    if database.pgbouncer:
        _POOLED.add(conn)
    return conn


def connect_like(conn: "psycopg.Connection[Any]", purpose: str, *, wait_s: float = 0.0) -> "psycopg.Connection[Any]":
    """A new autocommit connection to the very server ``conn`` reached: a helper of the
    work ``conn`` does (a writing connection, a reconnection after ``conn`` was lost).

    The same connection parameters as ``conn`` (credentials included, never shown), with
    host, port and hostaddr pinned to the server it reached ("host=a,b" could lead a helper
    to another server, a standby say); ``connect_timeout`` set (at most ``CONNECT_TIMEOUT_S``
    seconds an attempt); ``application_name`` ``conn``'s own followed by ``/<purpose>``, so
    a helper of a run carries that run's id; ``search_path`` pinned like ``connect()``'s
    (through a transaction-mode PgBouncer, per read-only transaction, as ``conn``'s).
    Tries again every half second for up to ``wait_s`` seconds (a crashed server recovers
    first). Raises psycopg.OperationalError, password scrubbed, when no connection could
    be made (its first line: the server's reason, such as "too many connections").
    """
    try:
        params = {o.keyword.decode(): o.val.decode() for o in conn.pgconn.info if o.val is not None}
        host, port, hostaddr = conn.info.host, conn.info.port, conn.info.hostaddr
    except psycopg.Error as exc:
        raise psycopg.OperationalError(f"the lost connection's parameters cannot be read ({type(exc).__name__})") from None
    params.update(host=host, port=str(port))
    if hostaddr:
        params["hostaddr"] = hostaddr
    else:
        params.pop("hostaddr", None)
    params["application_name"] = f"{params.get('application_name') or APPLICATION_NAME}/{purpose}"
    pooled = conn in _POOLED
    if not pooled:  # PgBouncer refuses startup options: there, read_only() pins search_path
        params["options"] = _pin(params.get("options", ""))
    deadline = time.monotonic() + wait_s
    while True:
        left = deadline - time.monotonic()
        params["connect_timeout"] = str(max(2, min(CONNECT_TIMEOUT_S, math.ceil(left))) if wait_s else CONNECT_TIMEOUT_S)
        try:
            helper = psycopg.connect(conninfo.make_conninfo(**params), autocommit=True)
        except psycopg.OperationalError as exc:
            if time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise psycopg.OperationalError(_scrub_secret(str(exc).strip(), params.get("password"))) from None
        if pooled:
            _POOLED.add(helper)
        return helper


def refuse_transaction_pooler(conn: "psycopg.Connection[Any]", what: str) -> None:
    """PoolerError when ``conn`` was opened through a transaction-mode PgBouncer
    (DATABASE_URL's ``pgbouncer=true``): there, consecutive transactions may run on
    different server sessions, so a session advisory lock and a session temp table do not
    hold. Writes nothing."""
    if conn in _POOLED:
        raise PoolerError(
            f"{what} refused: DATABASE_URL has pgbouncer=true (PgBouncer in transaction mode), which breaks the "
            "session advisory lock (one sweep per table) and the session temp table (the candidate snapshot). "
            "Refused before its first batch: no row was changed. Connect directly to PostgreSQL, or through PgBouncer in session pooling mode "
            "(without pgbouncer=true), for a live sweep or undo; inspect, preview and dry runs work as they are."
        )
