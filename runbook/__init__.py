"""Bounded, audited clean-up of LiteLLM's PostgreSQL tables, driven from Jupyter.

The public API (pinned here; everything else is internal):

    Target                 what to clean: table, columns, the stale rule (default: LiteLLM production)
    options() / Options    validated run parameters
    resolve() / connect()  the database from DATABASE_URL, PG*, or the embedded default
    inspect()              counts, breakdowns, the plan of one batch (read-only)
    preview()              the rows of the next batch and the SQL that will run (read-only)
    sweep()                bounded batches with their ledger, dry run by default
    undo()                 put back what one sweep run changed, dry run by default
    create_index()         the optional partial index inspect suggests, dry run by default
    errors                 RunbookError and its subclasses (see runbook.errors)
"""

from __future__ import annotations

from . import errors
from .db.connect import Database, connect, resolve
from .errors import *  # noqa: F403 - the exception tree is public as a whole
from .notebook.run import Run, start
from .ops.index import IndexResult, create_index
from .ops.inspection import InspectReport, inspect
from .ops.preview import PreviewReport, preview
from .ops.sweep import BatchResult, SweepResult, sweep
from .ops.undo import UndoResult, undo
from .rules.params import Options, options
from .rules.target import PRODUCTION_TERMINAL_STATUSES, Target
from .version import __version__

__all__ = [
    "__version__",
    "Database",
    "connect",
    "resolve",
    "start",
    "Run",
    "Target",
    "PRODUCTION_TERMINAL_STATUSES",
    "Options",
    "options",
    "InspectReport",
    "inspect",
    "PreviewReport",
    "preview",
    "BatchResult",
    "SweepResult",
    "sweep",
    "UndoResult",
    "undo",
    "IndexResult",
    "create_index",
]
__all__ += errors.__all__
