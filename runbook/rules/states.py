"""The states a run can be in, each defined once: notebook kinds, stop reasons, outcomes.

``StrEnum`` members are strings, so records, ledger rows and papermill parameters keep
the plain values (``"done"``, ``"sweep"``) they always had.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Kind", "StopReason", "Status"]


class Kind(StrEnum):
    """What a notebook (and its run) does."""

    INSPECT = "inspect"
    PREVIEW = "preview"
    SWEEP = "sweep"
    UNDO = "undo"
    INDEX = "index"
    HISTORY = "history"  # the ledger's runs and the executed notebooks, read back


class StopReason(StrEnum):
    """Why a sweep or undo stopped; recorded in its result, its record and the ledger."""

    DONE = "done"  # nothing left to do
    DRY_RUN = "dry_run"  # a dry run: nothing was to be written
    MAX_BATCHES = "max_batches"
    MAX_SECONDS = "max_seconds"
    STOP_FILE = "stop_file"  # the operator's stop file appeared
    INTERRUPTED = "interrupted"  # Ctrl-C / the kernel's interrupt
    STOP_REQUESTED = "stop_requested"  # the caller's should_stop() (the panel's Stop)
    REMAINING_LOCKED = "remaining_locked"  # what is left is locked by others or keeps changing
    GAVE_UP = "gave_up"  # a batch or the snapshot kept timing out after its retries
    CANCELLED = "cancelled"  # a statement was canceled by request (a DBA's pg_cancel_backend)
    FAILED = "failed"  # an error ended the run

    @property
    def failed(self) -> bool:
        """The run did not do what it was asked: its record says ``failed`` and ``python -m
        runbook run`` exits non-zero, so automation notices. A DBA's cancel is one: somebody
        else ended the run, and the operator must look."""
        return self in (StopReason.GAVE_UP, StopReason.FAILED, StopReason.CANCELLED)


class Status(StrEnum):
    """How a notebook's run ended, as its record's ``outcome.status`` says."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"  # the kernel died (the runner seals what it left)
    INTERRUPTED = "interrupted"  # the runner itself was interrupted (a third Ctrl-C)
    NOTHING_TO_DO = "nothing_to_do"  # undo without a run id: it lists recent runs instead
