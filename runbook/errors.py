"""The exceptions the runbook raises, one per failure the operator must act on.

    RunbookError
    ├── ParameterError          a parameter is invalid; nothing was read or written
    ├── DatabaseConfigError     no usable database: environment unset, unreachable, bad DSN
    ├── TargetNotFoundError     the table or one of its columns does not exist
    ├── ReadOnlyError           the server or role cannot write; the sweep refused to start
    ├── PoolerError             a transaction-mode PgBouncer: live sweep and undo refused
    ├── BlindHealthError        a health signal is unreadable by the role; live run refused
    ├── LedgerUnavailableError  the ledger cannot be created or written; says what to grant
    ├── SweepInProgressError    another session holds this target's sweep lock; names it
    ├── TooManyCandidatesError  more candidates than max_rows; nothing written
    ├── PreviewMismatchError    the first batch is not the approved preview's; nothing written
    ├── UnknownRunError         undo was given a run id the ledger does not know
    ├── ArchiveError            an archive file is missing, unreadable or not what the ledger sealed
    ├── ConnectionLostError     the server went away mid-run; names the batch that rolled back
    └── EmbeddedServerError     the embedded PostgreSQL could not be initialised or started

Every message names what was wrong and what is allowed, and never contains a password.
"""

from __future__ import annotations

__all__ = [
    "RunbookError",
    "ParameterError",
    "DatabaseConfigError",
    "TargetNotFoundError",
    "ReadOnlyError",
    "PoolerError",
    "BlindHealthError",
    "LedgerUnavailableError",
    "SweepInProgressError",
    "TooManyCandidatesError",
    "PreviewMismatchError",
    "UnknownRunError",
    "ArchiveError",
    "ConnectionLostError",
    "EmbeddedServerError",
]


class RunbookError(Exception):
    """Base class of every error the runbook raises on purpose."""


class ParameterError(RunbookError, ValueError):
    """A parameter has the wrong type or value. Raised before any query runs."""

    def __init__(self, name: str, value: object, allowed: str) -> None:
        self.name = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"parameter {name}={value!r} is not allowed: {allowed}")


class DatabaseConfigError(RunbookError):
    """The database to work on is not configured or cannot be reached."""


class TargetNotFoundError(RunbookError):
    """The target table or a column the runbook needs does not exist."""


class ReadOnlyError(RunbookError):
    """The database or role cannot write; raised before the first batch."""


class PoolerError(RunbookError):
    """The connection goes through PgBouncer in transaction mode (``pgbouncer=true``),
    where a session advisory lock and a session temp table do not hold; raised before
    any write of a live sweep or undo."""


class BlindHealthError(RunbookError):
    """The role cannot see a health signal (replication lag, a running VACUUM) and the
    operator did not pass ``allow_blind_health=True``; raised before the first batch."""


class LedgerUnavailableError(RunbookError):
    """The ledger schema or tables cannot be created or written by this role.

    A live sweep never runs without its ledger, so this is raised before the first batch.
    """


class SweepInProgressError(RunbookError):
    """Another session holds the target's advisory lock; the message names that session."""


class TooManyCandidatesError(RunbookError):
    """More candidates than the operator's ``max_rows`` cap; raised before any write."""


class PreviewMismatchError(RunbookError):
    """The sweep's first batch differs from the approved preview (``expect_fingerprint``)."""


class UnknownRunError(RunbookError):
    """Undo was asked for a run the ledger has no record of."""


class ArchiveError(RunbookError):
    """An archive file a run's ledger names is missing, unreadable, or its sha256 differs
    from the one its batch committed: restore refuses before it writes anything."""


class ConnectionLostError(RunbookError):
    """The connection broke during a run; the batch on it rolled back, committed ones stand."""


class EmbeddedServerError(RunbookError):
    """The embedded PostgreSQL server could not be initialised, started or stopped."""
