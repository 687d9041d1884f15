"""Bounded, audited clean-up of LiteLLM's PostgreSQL tables, driven from Jupyter.

The public API (pinned by tests/test_public_api.py; everything else is internal):

    start() / Run          what a notebook calls: checked parameters, connection, record
    Target                 what to clean: table, columns, the stale rule (default: LiteLLM production)
    options() / Options    validated run parameters
    resolve() / connect()  the database from DATABASE_URL, PG*, or the embedded default
    inspect()              counts, breakdowns, the plan of one batch (read-only)
    preview()              the rows of the next batch and the SQL that will run (read-only)
    sweep()                bounded batches with their ledger, dry run by default
    undo()                 put back what one sweep run changed, dry run by default
    create_index()         the optional partial index inspect suggests, dry run by default
    read_record()          the run record an executed notebook carries
    Kind, StopReason, Status   the states of a run
    errors                 RunbookError and its subclasses (see runbook.errors)

The package's folders are its layers, each importing only those before it (the test
tests/test_layers.py reads every import): rules -> sql -> db -> audit -> ops -> notebook -> tools.
"""

from __future__ import annotations

from . import errors
from .audit.record import read_record
from .db.connect import Database, connect, resolve
from .errors import *  # noqa: F403 - the exception tree is public as a whole
from .notebook.run import Run, start
from .ops.index import IndexResult, create_index
from .ops.inspection import InspectReport, inspect
from .ops.preview import PreviewReport, preview
from .ops.sweep import BatchResult, SweepResult, sweep
from .ops.undo import UndoResult, undo
from .rules.params import Options, options
from .rules.states import Kind, Status, StopReason
from .rules.target import PRODUCTION_TERMINAL_STATUSES, Target
from .version import __version__

__all__ = [
    "__version__",
    "start",
    "Run",
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
    "read_record",
    "Kind",
    "StopReason",
    "Status",
    "errors",
]
__all__ += errors.__all__
