"""Table maintenance after a delete or clear: the VACUUM the sweep notebook offers.

Returns a ``psycopg.sql.Composed`` with identifiers through ``sql.Identifier``; nothing is
executed here (``runbook.ops.sweep`` runs it, only with ``vacuum=True``).
"""

from __future__ import annotations

from psycopg import sql

from ..rules.target import Target
from .candidates import table

__all__ = ["vacuum_analyze"]


def vacuum_analyze(target: Target) -> sql.Composed:
    """``VACUUM (ANALYZE)`` of the target's table: makes the space of deleted rows and
    cleared payloads reusable and refreshes the planner's statistics. Outside any
    transaction; needs the table's owner (or MAINTAIN). No placeholders."""
    return sql.SQL("VACUUM (ANALYZE) {}").format(table(target))
