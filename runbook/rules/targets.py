"""The catalogue of targets: each a named rule on one of LiteLLM's tables, as data.

``python -m runbook targets`` lists them; every notebook takes ``target`` (default
``stale_responses``, the rule the runbook has always swept). Adding a target is an entry
here plus its tests: the SQL, the sweep, the ledger and undo follow from its ``Target``.

    stale_responses  background "response" objects that never reached a terminal status
                     (litellm-enterprise CheckResponsesCost._expire_stale_rows, PR #25227)
    stale_batches    unprocessed batch jobs that never reached a terminal status: LiteLLM's
                     give-up rule (litellm-enterprise CheckBatchCost._expire_if_old_and_unfinished),
                     which it applies one job at a time, at most 50 per hourly poll

    spend_logs, spend_log_tool_index, health_checks
                     rows older than the cutoff, deleted: LiteLLM's own retention job
                     (spend_log_cleanup.py) when maximum_spend_logs_retention_period /
                     maximum_health_check_retention_period is set, at most 500 batches of
                     1,000 per table per daily run, no order, no archive
    audit_log, error_logs
                     rows older than the cutoff, deleted: nothing in LiteLLM ever cleans these
    spend_log_payloads
                     spend rows older than the cutoff whose messages, response or
                     proxy_server_request hold something: those columns set to '{}' (LiteLLM's
                     empty value), the spend row kept

The first two are marked ``stale_expired``, never deleted; undo puts the previous status
back from the ledger. The others archive each row whole before it is deleted or cleared;
undo re-inserts or restores it from the archive.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from ..errors import ParameterError
from .target import DEFAULT_TARGET, Target

__all__ = ["Entry", "CATALOGUE", "target_named", "check_target_name"]


@dataclass(frozen=True)
class Entry:
    """One target as ``python -m runbook targets`` shows it."""

    target: Target
    rule: str  # the rule in words, as LiteLLM's own job selects the rows
    action: str
    litellm: str  # LiteLLM's own job, its setting and default, or "none: LiteLLM never cleans this"
    index: str  # the index the rule can use
    litellm_rows_per_hour: int | None  # how fast LiteLLM's own job drains a backlog at its defaults; None: never

    @property
    def name(self) -> str:
        return self.target.name


# LiteLLM's retention job: SPEND_LOG_RUN_LOOPS (500) batches of SPEND_LOG_CLEANUP_BATCH_SIZE
# (1000) per table per daily run.
_LITELLM_DAILY = 500 * 1000 // 24
_SPEND_JOB = (
    "spend_log_cleanup, daily when maximum_spend_logs_retention_period is set (none by default): at most "
    "SPEND_LOG_RUN_LOOPS (500) batches of SPEND_LOG_CLEANUP_BATCH_SIZE (1000) a run, no order, no archive"
)
_NEVER = "none: LiteLLM never cleans this"


def _delete(table: str, name: str, key: str, time: str, *more: str) -> Target:
    return Target(
        table=table, key_column=key, more_key_columns=more, time_column=time, status_column=None,
        purpose_column=None, action="delete", name=name,
    )  # fmt: skip


CATALOGUE: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry(
            Target(),
            "file_purpose = 'response', status not terminal (NULL never), created_at older than the cutoff, oldest first",
            "mark stale_expired",
            "CheckResponsesCost, every poll: MANAGED_OBJECT_STALENESS_CUTOFF_DAYS (default 7), batches of "
            "STALE_OBJECT_CLEANUP_BATCH_SIZE (default 1000)",
            "none by default (a full scan per pass); inspect suggests a partial index on (created_at, id)",
            1000,  # one bounded UPDATE of 1,000 rows per hourly poll
        ),
        Entry(
            Target(purpose="batch", unprocessed_column="batch_processed", name="stale_batches"),
            "file_purpose = 'batch', batch_processed = false, status not terminal (NULL never), created_at older "
            "than the cutoff, oldest first",
            "mark stale_expired",
            "CheckBatchCost, one job at a time as its hourly poll (50 jobs) meets it: 2 x "
            "MANAGED_OBJECT_STALENESS_CUTOFF_DAYS (default 14 days; pass stale_after_days 14 to match)",
            "none by default (a full scan per pass); inspect suggests a partial index on (created_at, id)",
            50,  # at most the 50 jobs of one hourly poll, each after a provider API call
        ),
        Entry(
            _delete("LiteLLM_SpendLogs", "spend_logs", "request_id", "startTime"),
            '"startTime" older than the cutoff, oldest first',
            "delete, archived first",
            _SPEND_JOB,
            'its index on "startTime" (and ("startTime", request_id))',
            _LITELLM_DAILY,
        ),
        Entry(
            _delete("LiteLLM_SpendLogToolIndex", "spend_log_tool_index", "request_id", "start_time", "tool_name"),
            "start_time older than the cutoff, oldest first (key: request_id, tool_name)",
            "delete, archived first",
            _SPEND_JOB + " (the spend logs' cutoff)",
            "its index on start_time",
            _LITELLM_DAILY,
        ),
        Entry(
            _delete("LiteLLM_HealthCheckTable", "health_checks", "health_check_id", "checked_at"),
            "checked_at older than the cutoff, oldest first",
            "delete, archived first",
            _SPEND_JOB.replace("maximum_spend_logs_retention_period", "maximum_health_check_retention_period"),
            "its index on checked_at",
            _LITELLM_DAILY,
        ),
        Entry(
            _delete("LiteLLM_AuditLog", "audit_log", "id", "updated_at"),
            "updated_at older than the cutoff, oldest first",
            "delete, archived first",
            _NEVER,
            "none (a full scan per pass); inspect suggests an index on (updated_at, id)",
            None,
        ),
        Entry(
            _delete("LiteLLM_ErrorLogs", "error_logs", "request_id", "startTime"),
            '"startTime" older than the cutoff, oldest first',
            "delete, archived first",
            _NEVER,
            'none (a full scan per pass); inspect suggests an index on ("startTime", request_id)',
            None,
        ),
        Entry(
            Target(
                table="LiteLLM_SpendLogs", key_column="request_id", time_column="startTime", status_column=None,
                purpose_column=None, action="clear", name="spend_log_payloads",
                payload_columns=("messages", "response", "proxy_server_request"),
            ),
            '"startTime" older than the cutoff and messages, response or proxy_server_request neither NULL nor '
            "'{}', oldest first",
            "clear messages, response, proxy_server_request to '{}' (the spend row stays), previous values archived first",
            _NEVER + " (its payload columns; spend_log_cleanup deletes whole rows)",
            'its index on "startTime"',
            None,
        ),
    )
}


def check_target_name(name: str, value: object) -> str:
    """``value`` if it names a target of the catalogue; ParameterError naming the known
    ones (and the closest, for a typo) otherwise."""
    if isinstance(value, str) and value in CATALOGUE:
        return value
    known = ", ".join(CATALOGUE)
    close = difflib.get_close_matches(value, list(CATALOGUE), n=1, cutoff=0.6) if isinstance(value, str) else []
    hint = f"did you mean {close[0]}? " if close else ""
    raise ParameterError(name, value, f"{hint}one of the targets: {known} (python -m runbook targets lists them)")


def target_named(name: str = DEFAULT_TARGET, schema: str = "public") -> Target:
    """The catalogue's target ``name`` on the tables of ``schema``; ParameterError for an
    unknown name."""
    base = CATALOGUE[check_target_name("target", name)].target
    return base if schema == base.schema else replace(base, schema=schema)
