"""What to clean up: a table, its columns, and the rule that makes a row stale.

The default ``Target()`` is LiteLLM's production sweep (litellm-enterprise,
``CheckResponsesCost._expire_stale_rows``, PR #25227)::

    UPDATE "LiteLLM_ManagedObjectTable" SET "status" = 'stale_expired'
    WHERE "id" IN (SELECT "id" FROM "LiteLLM_ManagedObjectTable"
                   WHERE "file_purpose" = 'response'
                     AND "status" NOT IN ('completed', 'complete', 'failed',
                                          'expired', 'cancelled', 'stale_expired')
                     AND "created_at" < $1::timestamptz
                   ORDER BY "created_at" ASC LIMIT $2)

Its predicate selects exactly the same rows, with two deliberate differences in *how*
(never in *which*): the cutoff is bound as ``timestamp without time zone`` in UTC, so it
does not shift with the session TimeZone, and ties in ``created_at`` are broken by ``id``
so that a preview and the batch after it agree row for row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ParameterError

__all__ = ["PRODUCTION_TERMINAL_STATUSES", "KNOWN_STATUSES", "DEFAULT_TARGET", "ACTIONS", "Target", "check_status"]

DEFAULT_TARGET = "stale_responses"  # the name of the rule the default Target() holds

# What a sweep does to a candidate row: mark it (set the status column), delete it, or
# clear its payload columns to LiteLLM's empty value ('{}'). Delete and clear archive the
# whole row first (``runbook.audit.archive``); undo puts back what was marked, deleted or cleared.
ACTIONS = ("mark", "delete", "clear")

PRODUCTION_TERMINAL_STATUSES: tuple[str, ...] = (
    "completed",
    "complete",
    "failed",
    "expired",
    "cancelled",
    "stale_expired",
)

# Every status LiteLLM is known to write into the table: OpenAI's response, batch,
# fine-tuning job, assistant run and file states that LiteLLM copies, and its own
# 'complete' and 'stale_expired'. The rule is a deny-list (terminal statuses), so a
# status outside this list is a candidate once stale: inspect names each one it finds.
KNOWN_STATUSES: tuple[str, ...] = (
    *PRODUCTION_TERMINAL_STATUSES,
    "queued", "in_progress", "incomplete", "requires_action",  # responses, assistant runs
    "validating", "finalizing", "cancelling",  # batches
    "validating_files", "running", "succeeded",  # fine-tuning jobs
    "uploaded", "processed", "error",  # files
)  # fmt: skip

# Plain SQL names only. sql.Identifier would quote anything safely, but an operator who
# types a quote, a semicolon or a non-ASCII letter into a table name has made a mistake
# we should report, not a name we should look for.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def _check_identifier(name: str, value: object) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ParameterError(name, value, "a SQL name of 1-63 ASCII letters, digits or '_', not starting with a digit")
    return value


def check_status(name: str, value: object) -> str:
    """A status literal: 1-64 printable ASCII characters without quotes or whitespace."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 64
        or not all(c.isascii() and (c.isalnum() or c in "_-.") for c in value)
    ):
        raise ParameterError(name, value, "a status of 1-64 letters, digits, '_', '-' or '.'")
    return value


@dataclass(frozen=True)
class Target:
    """A table and the rule that makes one of its rows a sweep candidate.

    A row is a candidate when ``time_column < cutoff`` and, where set: ``purpose_column =
    purpose``; ``status_column`` is not one of ``terminal_statuses`` (a NULL status is never
    a candidate, as in production); ``unprocessed_column`` is false; one of
    ``payload_columns`` holds something other than NULL or ``'{}'``. ``action`` says what
    the sweep does to it: ``mark`` sets ``status_column = new_status``; ``delete`` removes
    the row; ``clear`` sets its non-empty ``payload_columns`` to ``'{}'``. Rows are keyed by
    ``key_column`` and ``more_key_columns`` (a composite key), text columns. ``name`` is the
    rule's name in the catalogue of targets (``runbook.rules.targets``). Raises
    ParameterError for a malformed name, status or combination.
    """

    table: str = "LiteLLM_ManagedObjectTable"
    schema: str = "public"
    key_column: str = "id"
    time_column: str = "created_at"
    status_column: str | None = "status"
    purpose_column: str | None = "file_purpose"
    purpose: str = "response"
    terminal_statuses: tuple[str, ...] = field(default=PRODUCTION_TERMINAL_STATUSES)
    new_status: str = "stale_expired"
    unprocessed_column: str | None = None  # a boolean column that must be false (batch jobs: batch_processed)
    name: str = DEFAULT_TARGET
    action: str = "mark"
    more_key_columns: tuple[str, ...] = ()  # the rest of a composite key (SpendLogToolIndex: tool_name)
    payload_columns: tuple[str, ...] = ()  # clear: the jsonb columns emptied to '{}'

    def __post_init__(self) -> None:
        for name in ("table", "schema", "key_column", "time_column"):
            _check_identifier(name, getattr(self, name))
        for name in ("status_column", "purpose_column", "unprocessed_column"):
            if getattr(self, name) is not None:
                _check_identifier(name, getattr(self, name))
        for name in ("more_key_columns", "payload_columns"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                raise ParameterError(name, value, "a list of SQL names")
            for column in value:
                _check_identifier(name, column)
            object.__setattr__(self, name, tuple(value))
        _check_identifier("name", self.name)
        if self.action not in ACTIONS:
            raise ParameterError("action", self.action, f"one of {list(ACTIONS)}")
        if self.action == "mark" and self.status_column is None:
            raise ParameterError("status_column", None, "a column: the mark action sets it")
        if self.action == "clear" and not self.payload_columns:
            raise ParameterError("payload_columns", (), "at least one column: the clear action empties them")
        check_status("purpose", self.purpose)
        check_status("new_status", self.new_status)
        statuses = self.terminal_statuses
        if isinstance(statuses, str) or not isinstance(statuses, (tuple, list)) or not statuses:
            raise ParameterError("terminal_statuses", statuses, "a non-empty list of statuses")
        for status in statuses:
            check_status("terminal_statuses", status)
        object.__setattr__(self, "terminal_statuses", tuple(statuses))
        if self.new_status not in self.terminal_statuses:
            # Otherwise every swept row would still be a candidate and the sweep would
            # rewrite the same rows forever.
            raise ParameterError(
                "new_status", self.new_status, f"one of terminal_statuses {list(self.terminal_statuses)}"
            )

    @property
    def marks(self) -> bool:
        """True when the sweep sets a status (and undo puts the previous one back from the
        ledger); False when it deletes or clears (and undo restores from the archive)."""
        return self.action == "mark"

    @property
    def key_columns(self) -> tuple[str, ...]:
        return (self.key_column, *self.more_key_columns)

    @property
    def status_rule(self) -> bool:
        """True when the rule reads a status (only the mark targets' rules do)."""
        return self.status_column is not None and self.action == "mark"

    @property
    def verb(self) -> str:
        """What the sweep does to a row, in words: ``set to stale_expired``, ``deleted``, ``cleared``."""
        return {"mark": f"set to {self.new_status}", "delete": "deleted", "clear": "cleared"}[self.action]

    @property
    def subject(self) -> str:
        """Which rows, in words: ``'response' rows``; ``rows (by "startTime")``."""
        if self.purpose_column:
            return f"'{self.purpose}' rows"
        return f"rows (by {self.time_column})"

    def predicate_params(self) -> dict[str, Any]:
        """The bound values the predicate's placeholders expect (except the cutoff)."""
        return {"purpose": self.purpose, "terminal": list(self.terminal_statuses)}

    @property
    def columns(self) -> list[str]:
        """The columns the rule reads (inspect, preview and the sweep need SELECT on them)."""
        named = [*self.key_columns]
        if self.status_rule:
            named.append(str(self.status_column))
        named.append(self.time_column)
        named += [c for c in (self.purpose_column, self.unprocessed_column) if c]
        return named + [c for c in self.payload_columns if c not in named]

    def describe(self) -> dict[str, Any]:
        """What the target is, for records and fingerprints. The default target's is what it
        always was (so a fingerprint approved before the catalogue existed still holds);
        any other target adds its name and its extra condition."""
        if not self.marks:
            return {
                "schema": self.schema,
                "table": f"{self.schema}.{self.table}",
                "name": self.name,
                "action": self.action,
                "key": list(self.key_columns),
                "time_column": self.time_column,
                "payload_columns": list(self.payload_columns),
            }
        out: dict[str, Any] = {
            "schema": self.schema,
            "table": f"{self.schema}.{self.table}",
            "purpose": self.purpose,
            "terminal_statuses": list(self.terminal_statuses),
            "new_status": self.new_status,
        }
        if self.name != DEFAULT_TARGET or self.unprocessed_column:
            out.update(name=self.name, unprocessed_column=self.unprocessed_column)
        return out
