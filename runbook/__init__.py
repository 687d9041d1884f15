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

__version__ = "0.1.0"

from .connect import Database, connect, resolve
from . import errors
from .errors import *  # noqa: F403 - the exception tree is public as a whole
from .index import IndexResult, create_index
from .inspection import InspectReport, inspect
from .params import Options, options
from .preview import PreviewReport, preview
from .sweep import BatchResult, SweepResult, sweep
from .target import PRODUCTION_TERMINAL_STATUSES, Target
from .undo import UndoResult, undo

__all__ = [
    "__version__",
    "Database",
    "connect",
    "resolve",
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
