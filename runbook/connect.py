"""Which database to work on, and connections to it. Credentials come from the environment only.

Resolution order:
1. ``DATABASE_URL`` (LiteLLM's own variable; Prisma-only query parameters such as
   ``schema`` and ``connection_limit`` are stripped, since libpq rejects them);
2. libpq's ``PG*`` variables (PGHOST, PGDATABASE, PGSERVICE, ...), when any is set;
3. the embedded default database (``runbook.embedded``), started if needed.

Nothing here ever prints, logs or returns a password: ``describe()`` gives
``user@host:port/dbname`` and errors are scrubbed of the password before they are raised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import conninfo

from .embedded import EmbeddedServer, default_home
from .errors import DatabaseConfigError

__all__ = ["DEMO_DATABASE", "Database", "resolve", "connect", "redact"]

DEMO_DATABASE = "litellm"
APPLICATION_NAME = "litellm-runbook"

# Query parameters Prisma understands and libpq does not.
_PRISMA_ONLY = {"schema", "connection_limit", "pool_timeout", "pgbouncer", "statement_cache_size", "socket_timeout", "sslaccept", "sslidentity"}
_LIBPQ_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGSERVICEFILE")


@dataclass(frozen=True)
class Database:
    """Where to connect: a libpq DSN (may hold a password: never display it) and its origin."""

    dsn: str
    source: str  # "DATABASE_URL", "PG* environment" or "embedded"

    def describe(self) -> str:
        """``user@host:port/dbname (source)``, without any secret."""
        return f"{redact(self.dsn)} ({self.source})"


def _strip_prisma(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _PRISMA_ONLY]
    return urlunsplit(parts._replace(query=urlencode(query)))


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
    secrets = [s for s in (password, os.environ.get("PGPASSWORD")) if s]
    for secret in secrets:
        message = message.replace(str(secret), "***")
    return message


def resolve(environ: dict[str, str] | None = None) -> Database:
    """Pick the database from the environment (see module docstring).

    Starting the embedded server writes below ``RUNBOOK_HOME``. Raises
    DatabaseConfigError when DATABASE_URL cannot be parsed.
    """
    env = os.environ if environ is None else environ
    url = env.get("DATABASE_URL", "").strip()
    if url:
        dsn = _strip_prisma(url)
        try:
            conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise DatabaseConfigError(
                "DATABASE_URL is not a valid PostgreSQL URL or DSN "
                "(expected postgresql://user@host:port/dbname; put the password in PGPASSWORD or ~/.pgpass)"
            ) from None
        return Database(dsn, "DATABASE_URL")
    if any(env.get(name) for name in _LIBPQ_ENV):
        return Database("", "PG* environment")
    server = EmbeddedServer(default_home())
    server.start()
    return Database(server.dsn(DEMO_DATABASE), "embedded")


def connect(database: Database | None = None, *, purpose: str = "runbook") -> "psycopg.Connection[Any]":
    """An autocommit connection; every unit of work opens its own ``conn.transaction()``.

    Raises DatabaseConfigError (password scrubbed) when the server cannot be reached.
    """
    database = database or resolve()
    try:
        return psycopg.connect(
            database.dsn, autocommit=True, application_name=f"{APPLICATION_NAME}/{purpose}", connect_timeout=10
        )
    except psycopg.OperationalError as exc:
        hint = ""
        if database.source == "embedded":
            hint = " (run `make demo` to create the demo database)"
        raise DatabaseConfigError(
            f"cannot connect to {database.describe()}: {_scrub(str(exc).strip(), database.dsn)}{hint}"
        ) from None
