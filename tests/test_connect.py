"""Which database the runbook talks to, and that no password ever leaves the environment."""

from __future__ import annotations

import pytest

from runbook.connect import Database, connect, redact, resolve
from runbook.errors import DatabaseConfigError


def test_database_url_wins_and_prisma_parameters_are_stripped() -> None:
    db = resolve({"DATABASE_URL": "postgresql://llm:pw@db.internal:6432/litellm?schema=public&connection_limit=5&sslmode=require", "PGHOST": "other"})
    assert db.source == "DATABASE_URL"
    assert "schema=" not in db.dsn and "connection_limit" not in db.dsn and "sslmode=require" in db.dsn
    assert db.describe() == "llm@db.internal:6432/litellm (DATABASE_URL)"
    assert "pw" not in db.describe()


def test_pg_environment_is_used_when_no_database_url() -> None:
    assert resolve({"PGHOST": "db", "PGDATABASE": "litellm"}) == Database("", "PG* environment")


def test_redact_drops_password_from_dsn_and_url() -> None:
    assert redact("host=h port=1 user=u password=secret dbname=d") == "u@h:1/d"
    assert "secret" not in redact("postgresql://u:secret@h/d")


def test_unreachable_server_error_names_it_without_password() -> None:
    db = Database("host=127.0.0.1 port=9 user=u password=topsecret dbname=d connect_timeout=2", "DATABASE_URL")
    with pytest.raises(DatabaseConfigError) as err:
        connect(db)
    assert "u@127.0.0.1:9/d" in str(err.value) and "topsecret" not in str(err.value)


def test_invalid_database_url_is_a_clear_error() -> None:
    with pytest.raises(DatabaseConfigError, match="DATABASE_URL is not a valid PostgreSQL URL"):
        resolve({"DATABASE_URL": "postgresql://u:p@h/d?bogus_option=1"})
