"""The audit trail as a history: ``verify`` with no path checks every sealed file of the run
folder and every seal of the ledger (match, edited, missing, unknown; a dry run is unknown to
the ledger and that is no failure), and ``export`` writes a verified run as one HTML page that
holds no password."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import conninfo

from runbook.audit.export import passwords
from runbook.tools.runner import NOTEBOOK_DIR, Executed, execute
from tests.rows import insert

ROOT = NOTEBOOK_DIR.parent
PASSWORD = "pw-s3cret-xyz"


def _run(name: str, params: dict[str, object], runs: Path, database_url: str) -> Executed:
    done = execute(name, params, runs, env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"})
    assert done.ok, done.error
    return done


def _cli(*args: str, runs: Path, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        [sys.executable, "-m", "runbook", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**clean, "DATABASE_URL": database_url, "RUNBOOK_RUN_DIR": str(runs), **env},
    )  # fmt: skip


def _states(stdout: str) -> dict[str, str]:
    """File name -> state, from verify's lines ``<path>: <state> (<detail>)``."""
    found = {}
    for line in stdout.splitlines():
        path, sep, rest = line.partition(": ")
        if sep and rest.split(" ", 1)[0] in ("match", "edited", "missing", "unknown"):
            found[Path(path).name] = rest.split(" ", 1)[0]
    return found


def _line(stdout: str, name: str) -> str:
    (line,) = [x for x in stdout.splitlines() if Path(x.partition(": ")[0]).name == name]
    return line


def _rewrite(path: Path, old: str, new: str, *, reseal: bool) -> None:
    """Edit a sealed file (made writable first); with ``reseal`` its .sha256 follows."""
    import hashlib

    path.chmod(0o644)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    if reseal:
        (path.parent / (path.name + ".sha256")).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")


def test_verify_with_no_path_checks_the_whole_folder_against_the_ledger(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    for i in range(4):
        insert(conn, status="queued", age_days=10 + i)
    live = _run("sweep", {"dry_run": False, "batch_size": 2, "run_id": "t-live"}, tmp_path, dsn).path
    dry = _run("sweep", {"run_id": "t-dry"}, tmp_path, dsn).path
    insert(conn, status="queued", age_days=12)
    other = _run("sweep", {"dry_run": False, "run_id": "t-other"}, tmp_path, dsn).path

    done = _cli("verify", runs=tmp_path, database_url=dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _states(done.stdout) == {live.name: "match", other.name: "match", dry.name: "unknown"}
    # A dry run wrote nothing, so the ledger never saw it: reported, and no failure.
    assert "expected, not a failure: a dry sweep run writes nothing, so the ledger never saw it" in _line(done.stdout, dry.name)
    assert "3 files: 2 match, 0 edited, 0 missing, 1 unknown; 0 failed" in done.stdout

    # A stray notebook the ledger never saw, with no record and no .sha256: a failure.
    stray = tmp_path / "stray.ipynb"
    stray.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    done = _cli("verify", runs=tmp_path, database_url=dsn)
    assert done.returncode == 1 and _states(done.stdout)["stray.ipynb"] == "unknown"
    assert "1 failed" in done.stdout
    stray.unlink()

    # A dry run's record changed to read as a live sweep, its .sha256 rewritten to match: a
    # live run the ledger has no row for is a failure, not "expected".
    _rewrite(dry, '"dry_run": true', '"dry_run": false', reseal=True)
    done = _cli("verify", runs=tmp_path, database_url=dsn)
    assert done.returncode == 1 and _states(done.stdout)[dry.name] == "unknown"
    assert "live sweep run t-dry the ledger has no row for" in _line(done.stdout, dry.name)
    # Changed back but its .sha256 left as it was: a file the ledger has no seal for is
    # edited when it differs from its .sha256.
    _rewrite(dry, '"dry_run": false', '"dry_run": true', reseal=False)
    done = _cli("verify", runs=tmp_path, database_url=dsn)
    assert done.returncode == 1 and _states(done.stdout)[dry.name] == "edited"
    _rewrite(dry, '"dry_run": true', '"dry_run": true', reseal=True)
    assert _cli("verify", runs=tmp_path, database_url=dsn).returncode == 0

    # One byte flipped in a sealed notebook: edited.
    live.chmod(0o644)
    data = bytearray(live.read_bytes())
    at = data.index(b"t-live")
    data[at] ^= 0x01
    live.write_bytes(bytes(data))
    # Another sealed notebook deleted: missing, named by the ledger's seal.
    other.chmod(0o644)
    other.unlink()
    done = _cli("verify", runs=tmp_path, database_url=dsn)
    assert done.returncode == 1
    states = _states(done.stdout)
    assert states == {live.name: "edited", other.name: "missing", dry.name: "unknown"}
    assert "does NOT match its seal" in _line(done.stdout, live.name)
    assert "the ledger sealed it for run t-other" in _line(done.stdout, other.name)
    assert "1 edited, 1 missing, 1 unknown; 2 failed" in done.stdout

    # Paths given: only those, a nonexistent one missing.
    done = _cli("verify", str(dry), str(tmp_path / other.name), runs=tmp_path, database_url=dsn)
    assert done.returncode == 1 and _states(done.stdout) == {dry.name: "unknown", other.name: "missing"}
    # A dry run's notebook deleted: only its .sha256 remembers it, and verify says so.
    dry.chmod(0o644)
    dry.unlink()
    done = _cli("verify", runs=tmp_path, database_url=dsn)
    assert _states(done.stdout)[dry.name] == "missing" and "its .sha256 is in the folder" in _line(done.stdout, dry.name)


def _url_with_password(dsn: str) -> str:
    """A URL for the test database as role rb_pw, its password in it (the socket may trust it anyway)."""
    parts = conninfo.conninfo_to_dict(dsn)
    return f"postgresql://rb_pw:{PASSWORD}@/{parts['dbname']}?host={quote(str(parts['host']), safe='')}&port={parts['port']}"


def test_export_writes_a_verified_run_as_one_page_without_the_password(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    conn.execute(
        f"DO $$ BEGIN CREATE ROLE rb_pw LOGIN SUPERUSER PASSWORD '{PASSWORD}'; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    url = _url_with_password(dsn)
    for i in range(3):
        insert(conn, status="queued", age_days=10 + i)
    sweep = _run("sweep", {"dry_run": False, "run_id": "t-export"}, tmp_path, url)
    # A later read-only run given the same id: the sweep, the file the ledger seals, is exported.
    _run("inspect", {"run_id": "t-export"}, tmp_path, url)

    done = _cli("export", "t-export", runs=tmp_path, database_url=url)
    assert done.returncode == 0, done.stdout + done.stderr
    page = tmp_path / f"{sweep.path.stem}.html"
    assert f"wrote {page}" in done.stdout and "match" in done.stdout and "_01_inspect_t-export.ipynb" in done.stdout
    html = page.read_text()
    assert "run t-export" in html and "3 rows set to stale_expired in 1 batches" in html
    assert "<script src=" not in html and "cdnjs" not in html  # nothing fetched when opened
    assert PASSWORD not in html and PASSWORD not in done.stdout + done.stderr

    # A password the page happens to contain (here the run id) is refused; nothing written.
    out = tmp_path / "leak.html"
    done = _cli("export", "t-export", "--out", str(out), runs=tmp_path, database_url=url, PGPASSWORD="t-export")
    assert done.returncode == 2 and "contains the database password" in done.stderr and not out.exists()

    # An edited notebook is refused, unless --force, and then its first line says so.
    _rewrite(sweep.path, '"changed": 3', '"changed": 2', reseal=True)
    page.unlink()
    done = _cli("export", "t-export", runs=tmp_path, database_url=url)
    assert done.returncode == 2 and "refusing to export" in done.stderr and "edited" in done.stderr and not page.exists()
    done = _cli("export", "t-export", "--force", runs=tmp_path, database_url=url)
    assert done.returncode == 0, done.stderr
    assert "<strong>EDITED</strong>, exported with --force" in page.read_text()


def test_an_unknown_run_id_names_the_folder(dsn: str, tmp_path: Path) -> None:
    done = _cli("export", "t-nowhere", runs=tmp_path, database_url=dsn)
    assert done.returncode == 2 and "none is named after it" in done.stderr and str(tmp_path) in done.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "postgresql://u:p%40ss@h:5432/db?schema=litellm"}, ["p@ss"]),
        ({"DATABASE_URL": "host=h user=u password=kv-pass dbname=d", "PGPASSWORD": "env-pass"}, ["env-pass", "kv-pass"]),
        ({"DATABASE_URL": "postgresql://u@h/db"}, []),
    ],
)
def test_the_passwords_export_looks_for(env: dict[str, str], expected: list[str]) -> None:
    assert passwords(env) == expected
