"""Transitional: removed when ops/ is rewired.

Re-exports, from their homes in the SQL layer, only the names ``ops/live.py``,
``ops/sweep.py``, ``ops/undo.py`` and ``ops/rounds.py`` still take from here. New code
imports ``runbook.sql.candidates``, ``undo``, ``ledger``, ``catalog`` or ``index``.
"""

from __future__ import annotations

from .candidates import batch_update, candidate_count, snapshot, snapshot_next, table
from .catalog import run_start
from .ledger import LEDGER_SCHEMA, ledger_batches
from .undo import undo_counts, undo_next, undo_snapshot, undo_update

__all__ = [
    "LEDGER_SCHEMA", "batch_update", "candidate_count", "ledger_batches", "run_start", "snapshot", "snapshot_next",
    "table", "undo_counts", "undo_next", "undo_snapshot", "undo_update",
]  # fmt: skip
