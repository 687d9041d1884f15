"""The optional partial index that makes finding candidates cheap, built only when asked.

``CREATE INDEX CONCURRENTLY`` does not block LiteLLM's reads or writes while it builds,
but it cannot run inside a transaction, waits for every transaction open when it starts,
and leaves an INVALID index behind if it fails (which must be dropped before a retry).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ..db.transactions import Conn, check_target
from ..rules.target import Target
from ..sql.index import create_index as create_statement
from ..sql.index import drop_index, index_name, index_state, no_statement_timeout
from .inspection import index_suggestion
from .live import check_writable

__all__ = ["IndexResult", "create_index"]


@dataclass
class IndexResult:
    statement: str
    existed: bool
    valid: bool
    created: bool
    dry_run: bool
    seconds: float
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _state(conn: Conn, target: Target) -> tuple[bool, bool]:
    row = conn.execute(index_state(), {"schema": target.schema, "name": index_name(target)}).fetchone()
    return (row is not None, bool(row[0]) if row else False)


def create_index(conn: Conn, target: Target, *, dry_run: bool = True) -> IndexResult:
    """Build the suggested index (or, dry, say what would run). Writes only that index.

    Raises TargetNotFoundError, ReadOnlyError; psycopg errors of the build itself.
    """
    check_target(conn, target)
    statement = index_suggestion(target, conn)
    existed, valid = _state(conn, target)
    if existed and not valid:
        drop = drop_index(target).as_string(conn)
        return IndexResult(statement, True, False, False, dry_run, 0.0, f"an INVALID index from a failed build exists: run {drop} first")
    if existed:
        return IndexResult(statement, True, True, False, dry_run, 0.0, "the index exists and is valid: nothing to do")
    if dry_run:
        return IndexResult(statement, False, False, False, True, 0.0, "dry run: nothing built; set dry_run False to build it")
    check_writable(conn, target)
    started = time.monotonic()
    conn.execute(no_statement_timeout())
    conn.execute(create_statement(target))
    existed, valid = _state(conn, target)
    return IndexResult(statement, False, valid, True, False, round(time.monotonic() - started, 3), "built" if valid else "build left an INVALID index")
