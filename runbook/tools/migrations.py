"""LiteLLM's real schema, built from its own migrations (``litellm-proxy-extras``).

The migrations are applied the way LiteLLM's deploy step applies them: folder by folder
in lexicographic order, each statement in autocommit mode (a few use
``CREATE INDEX CONCURRENTLY``, which cannot run inside a transaction). ``psql`` from the
bundled PostgreSQL does exactly that, so we hand it one script of ``\\i`` lines.
Only the demo and the tests call this; the runbook never changes a user's schema.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import tempfile
from pathlib import Path

from ..db.embedded import bundled_bin
from ..errors import RunbookError
from ..sql.demo import quiet_messages

__all__ = ["MIGRATIONS_PACKAGE", "migration_files", "migrations_version", "apply_migrations"]

MIGRATIONS_PACKAGE = "litellm-proxy-extras"


def migrations_version() -> str:
    return importlib.metadata.version(MIGRATIONS_PACKAGE)


def migration_files() -> list[Path]:
    """Every ``migration.sql`` of the installed package, in the order LiteLLM applies them."""
    spec = importlib.util.find_spec("litellm_proxy_extras")
    if spec is None or not spec.submodule_search_locations:
        raise RunbookError(f"{MIGRATIONS_PACKAGE} is not installed; run `make venv`")
    root = Path(next(iter(spec.submodule_search_locations))) / "migrations"
    return sorted(root.glob("*/migration.sql"), key=lambda p: p.parent.name)


def apply_migrations(dsn: str) -> int:
    """Apply all LiteLLM migrations to the (empty) database at ``dsn``; return how many.

    Writes LiteLLM's tables into that database. Raises RunbookError naming the migration
    that failed, with psql's message.
    """
    files = migration_files()
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(f"{quiet_messages().as_string(None)};\n")
        for f in files:
            script.write(f"\\echo {f.parent.name}\n\\i '{f}'\n")
    try:
        done = subprocess.run(
            [str(bundled_bin() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", script.name],
            capture_output=True,
            text=True,
            env={**os.environ, "PGOPTIONS": "-c client_min_messages=error"},
        )
    finally:
        os.unlink(script.name)
    if done.returncode != 0:
        applied = done.stdout.strip().splitlines()
        last = applied[-1] if applied else "(none)"
        raise RunbookError(f"LiteLLM migration {last} failed: {done.stderr.strip()}")
    return len(files)
