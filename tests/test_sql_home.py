"""All SQL text lives in the SQL layer: no string outside ``runbook/sql/`` reads as a statement.

Read from the code itself: every string literal of every module (f-strings included, with
``{}`` for what they format in), docstrings left out. A literal is SQL when it starts with a
statement, or holds one after a ``;``: a statement keyword followed by what makes it SQL
(``SELECT`` anything, ``INSERT INTO``, ``UPDATE x SET``, ``CREATE TABLE``, ``SET x = ...``,
``VACUUM (VERBOSE) t``, ...), so that prose such as "VACUUM (pg_stat_progress_vacuum.relid
is NULL ...)" in a message does not count.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import runbook

PACKAGE = Path(runbook.__file__).parent
SQL_LAYER = "runbook/sql/"

# Files that may hold SQL text outside runbook/sql/, with the reason why: none.
ALLOWED: dict[str, str] = {}

_NAME = r"""[\w".{}$]+"""  # an identifier, qualified or quoted, or a format field standing for one
_VACUUM_OPTION = r"(?:VERBOSE|ANALYZE|FREEZE|FULL|SKIP_LOCKED|INDEX_CLEANUP|PROCESS_MAIN|PROCESS_TOAST|TRUNCATE|PARALLEL|DISABLE_PAGE_SKIPPING|BUFFER_USAGE_LIMIT)"
_OBJECT = (
    r"(?:TABLE|INDEX|SCHEMA|DATABASE|ROLE|USER|VIEW|MATERIALIZED\s+VIEW|FUNCTION|PROCEDURE|SEQUENCE|TRIGGER|TYPE"
    r"|EXTENSION|POLICY|DOMAIN|RULE|PUBLICATION|SUBSCRIPTION|TABLESPACE|AGGREGATE|OPERATOR|COLUMN|CONSTRAINT)"
)
# A statement: its keyword (upper case, the house style), then what makes it SQL.
STATEMENT = re.compile(
    r"(?:^|;)\s*(?:"
    r"SELECT\b\s*\S"
    r"|WITH\s+(?:RECURSIVE\s+)?\w+(?:\s*\([^)]*\))?\s+AS\s+(?:NOT\s+)?(?:MATERIALIZED\s+)?\("
    r"|INSERT\s+INTO\s"
    rf"|UPDATE\s+(?:ONLY\s+)?{_NAME}(?:\s+(?:AS\s+)?\w+)?\s+SET\s"
    r"|DELETE\s+FROM\s"
    rf"|(?:CREATE|ALTER|DROP)\s+(?:(?:OR\s+REPLACE|UNIQUE|TEMP|TEMPORARY|UNLOGGED|GLOBAL|LOCAL)\s+)*{_OBJECT}\b"
    rf"|COMMENT\s+ON\s+{_OBJECT}\b"
    r"|(?:GRANT|REVOKE)\s+[^;]*?\s(?:ON|TO|FROM)\s"
    r"|SET\s+(?:LOCAL\s+|SESSION\s+)?(?:TRANSACTION\b|ROLE\b|[a-z_][\w.]*\s*(?:=|TO\b))"
    r"|SHOW\s+[a-z_][\w.]*\s*(?:;|$)"
    rf"|LOCK\s+(?:TABLE\s+)?{_NAME}\s*(?:IN\s|NOWAIT|;|$)"
    rf"|(?:VACUUM|ANALYZE)(?:\s*\(\s*{_VACUUM_OPTION}\b|(?:\s+(?:VERBOSE|FULL|FREEZE))*\s+{_NAME}\s*(?:\(|;|$)|\s*(?:;|$))"
    rf"|TRUNCATE\s+(?:TABLE\s+)?{_NAME}"
    r"|EXPLAIN\s*(?:\(|ANALYZE\b|VERBOSE\b|SELECT\b|WITH\b|\{)"
    r")",
    re.MULTILINE,
)


def looks_like_sql(text: str) -> bool:
    """Whether ``text`` starts with a SQL statement or holds one after a ``;``."""
    return STATEMENT.search(text) is not None


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def sql_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal in ``path`` that reads as SQL; docstrings left out."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    inside_fstrings: set[int] = set()
    texts: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                inside_fstrings.add(id(value))
                is_text = isinstance(value, ast.Constant) and isinstance(value.value, str)
                parts.append(value.value if is_text else "{}")  # type: ignore[union-attr]
            texts.append((node.lineno, "".join(parts)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip | inside_fstrings:
            texts.append((node.lineno, node.value))
    return sorted((line, text) for line, text in texts if looks_like_sql(text))


def _package_files() -> dict[str, Path]:
    return {p.relative_to(PACKAGE.parent).as_posix(): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_sql_text_lives_in_the_sql_layer() -> None:
    stray = [
        f"{name}:{line}: {text.strip()[:80]!r}"
        for name, path in _package_files().items()
        if not name.startswith(SQL_LAYER) and name not in ALLOWED
        for line, text in sql_literals(path)
    ]
    assert stray == [], "SQL text belongs in runbook/sql/ (a builder returning psycopg.sql.Composed)"


def test_the_allow_list_names_files_that_exist() -> None:
    assert set(ALLOWED) <= set(_package_files())


@pytest.mark.parametrize(
    "source",
    [
        'Q = "SELECT 1"',
        'conn.execute("SELECT pg_catalog.pg_try_advisory_lock(%s)", [key])',
        'conn.execute(f"UPDATE {table} SET status = %s WHERE id = %s", args)',
        'x = "INSERT INTO t (a) VALUES (%s)"',
        'x = "WITH c AS (SELECT 1) SELECT * FROM c"',
        'x = "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} (a)"',
        'x = "DROP TABLE IF EXISTS {}"',
        'x = "ALTER TABLE {} ADD COLUMN seq bigint"',
        'x = "SET statement_timeout = 0"',
        'x = "SET LOCAL search_path TO pg_catalog"',
        'x = "SHOW search_path"',
        'x = f"GRANT USAGE ON SCHEMA {schema} TO {role}"',
        'x = "REVOKE TEMPORARY ON DATABASE d FROM r"',
        'x = "VACUUM (VERBOSE) t"',
        'x = \'ANALYZE "LiteLLM_ManagedObjectTable"\'',
        'x = "LOCK TABLE t IN SHARE MODE"',
        'x = "EXPLAIN (FORMAT JSON) {}"',
        'x = "TRUNCATE t"',
        'x = "DELETE FROM t WHERE a = 1"',
        'x = "no statement here; SELECT 2"',
        'x = "set_config in prose;\\n  SET client_min_messages = error;\\n"',
        'def f():\n    return "SELECT now()"',
    ],
)
def test_the_checker_finds_planted_sql(tmp_path: Path, source: str) -> None:
    """The checker itself: a statement in any string literal, f-strings included, is found."""
    planted = tmp_path / "planted.py"
    planted.write_text(source + "\n")
    assert len(sql_literals(planted)) == 1


@pytest.mark.parametrize(
    "source",
    [
        'def f():\n    """Runs SELECT 1 and UPDATE t SET a = 1; documented, not run."""',
        '"""Module docstring: INSERT INTO the ledger, SELECT count(*) FROM it."""',
        'x = "VACUUM (pg_stat_progress_vacuum.relid is NULL for other roles\' sessions)"',
        'x = f"role {role} may SELECT but not UPDATE {table}"',
        'x = "a VACUUM of the table is running"',
        'x = "Set the parameter to 5, then show it"',
        'x = f"health: role {role} cannot see it. GRANT pg_read_all_stats TO {role} to see them"',
        'x = "UPDATE privilege is missing"',
        'x = "select an option"',
    ],
)
def test_the_checker_leaves_prose_and_docstrings_alone(tmp_path: Path, source: str) -> None:
    planted = tmp_path / "prose.py"
    planted.write_text(source + "\n")
    assert sql_literals(planted) == []
