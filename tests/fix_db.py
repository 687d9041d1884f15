"""A real PostgreSQL for the tests, started by the project itself, with LiteLLM's schema.

One embedded server per session, in a fresh folder; one template database built from
LiteLLM's migrations; every test gets its own database cloned from the template
(about 0.1 s). nbval's kernels cannot see fixtures, so the session also exports
DATABASE_URL (a demo-data database) before any kernel starts.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo, sql

from runbook.db.embedded import EmbeddedServer
from runbook.tools.demo import load_demo_rows, reset_database

TEMPLATE = "litellm_template"
_server: EmbeddedServer | None = None
_counter = itertools.count(1)
_scratch: Path | None = None

_DB_ENV = ("DATABASE_URL", "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGPASSWORD", "PGOPTIONS")


_more_servers: list[EmbeddedServer] = []  # started by tests (a standby): stopped on SIGTERM too


def track(server: EmbeddedServer) -> EmbeddedServer:
    """Have a server a test started destroyed with the session's if the run is killed."""
    _more_servers.append(server)
    return server


def _terminate(signum: int, frame: object) -> None:
    # A `timeout` or CI kill: stop and remove every server this session started, then go.
    # (Raising here instead would land inside whatever the test was doing, and a sweep
    # under test treats an exception mid-batch as its own to handle.)
    for started in [*_more_servers, *([_server] if _server else [])]:
        started.destroy()
    if _scratch is not None:
        shutil.rmtree(_scratch, ignore_errors=True)
    os._exit(128 + signum)


def pytest_sessionstart(session: pytest.Session) -> None:
    global _server, _scratch
    signal.signal(signal.SIGTERM, _terminate)
    # /var/tmp, not $HOME: the server user must traverse every parent folder.
    home = Path(tempfile.mkdtemp(prefix="litellm-runbook-test-", dir="/var/tmp"))
    _server = EmbeddedServer(home)
    try:
        _server.start()
        reset_database(_server.dsn(), TEMPLATE)
        nbval_dsn = reset_database(_server.dsn(), "litellm_nbval")
        load_demo_rows(nbval_dsn, 3000)
    except BaseException as exc:
        # No session, so no sessionfinish: remove what this one made, then report.
        try:
            _server.destroy()
        finally:
            shutil.rmtree(home, ignore_errors=True)
            _server = None
        exc.add_note(f"the test session's embedded server in {home} did not start; that folder was removed")
        raise
    for name in _DB_ENV:
        os.environ.pop(name, None)
    os.environ["DATABASE_URL"] = nbval_dsn
    _scratch = Path(tempfile.mkdtemp(prefix="litellm-runbook-runs-"))
    os.environ["RUNBOOK_RUN_DIR"] = str(_scratch)
    os.environ["RUNBOOK_ARCHIVE_DIR"] = str(_scratch / "archive")
    # Never let a test fall back to (and start) the user's own embedded demo server.
    os.environ["RUNBOOK_HOME"] = str(home / "no-default-server")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _server is not None:
        _server.destroy()
    if _scratch is not None:
        shutil.rmtree(_scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def server() -> EmbeddedServer:
    assert _server is not None
    return _server


@pytest.fixture(scope="session")
def admin_dsn(server: EmbeddedServer) -> str:
    return server.dsn()


@pytest.fixture
def dsn(admin_dsn: str) -> Iterator[str]:
    """A fresh database with LiteLLM's schema and no rows, dropped afterwards."""
    name = f"test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    yield conninfo.make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def standby(server: EmbeddedServer) -> Iterator[EmbeddedServer]:
    """A hot standby streaming from the session's server, for the tests of one module."""
    home = Path(tempfile.mkdtemp(prefix="litellm-runbook-standby-", dir="/var/tmp"))
    track(EmbeddedServer(home))  # a kill during the base backup still removes the folder
    replica = track(server.clone_standby(home))
    yield replica
    replica.destroy()
