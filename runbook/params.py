"""Validation of every operator-supplied parameter, before any query runs.

Papermill hands notebook parameters over as whatever Python value the command line
parsed (``-p batch_size abc`` arrives as the string ``'abc'``), so each check accepts
exactly one kind of value and names the parameter, the value and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

from .errors import ParameterError

__all__ = [
    "MAX_BATCH_SIZE",
    "check_int",
    "check_number",
    "check_bool",
    "check_status",
    "check_cutoff",
    "Options",
    "options",
    "refuse_secrets",
]

# Larger batches hold more row locks for longer than an incident-time sweep should;
# 100K rows is already ~150 MB of TOASTed file_object rewritten in one transaction.
MAX_BATCH_SIZE = 100_000


def check_int(name: str, value: object, low: int, high: int) -> int:
    """Return ``value`` if it is an int (not a bool) in [low, high]; else ParameterError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParameterError(name, value, f"an integer from {low:,} to {high:,}".replace(",", "_"))
    return value


def check_number(name: str, value: object, low: float, high: float, unit: str) -> float:
    """Return ``value`` as float if it is a finite int or float in [low, high]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ParameterError(name, value, f"a number of {unit} from {low:g} to {high:g}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(name, value, "True or False (papermill: -p NAME True)")
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


def check_path(name: str, value: object) -> str:
    """A file-system path (need not exist yet), or '' for none."""
    if not isinstance(value, str) or len(value) > 4096 or "\x00" in value:
        raise ParameterError(name, value, "a path (string) or '' for none")
    return value


def check_fingerprint(name: str, value: object) -> str:
    """A preview fingerprint (16 hex digits), or '' for none."""
    if not isinstance(value, str) or not (value == "" or (len(value) == 16 and all(c in "0123456789abcdef" for c in value))):
        raise ParameterError(name, value, "the 16 hex digits a preview printed, or '' for none")
    return value


def check_cutoff(name: str, value: object, now: datetime | None = None) -> datetime:
    """An absolute UTC cutoff at least one day in the past, as a naive UTC datetime.

    Accepts an ISO 8601 string or a datetime; a value with an offset is converted to UTC,
    a naive one is taken as UTC (the column is UTC wall-clock without time zone).
    """
    parsed: datetime | None = None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            parsed = None
    if parsed is None:
        raise ParameterError(name, value, "an ISO 8601 UTC timestamp such as '2026-11-01T00:00:00Z'")
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    if parsed > now - timedelta(days=1):
        raise ParameterError(name, value, "a timestamp at least 1 day in the past (UTC)")
    return parsed


MAX_WORKERS = 4  # connections writing at once; more only adds contention on a small server


@dataclass(frozen=True)
class Options:
    """Validated run parameters; build with ``options()``, never directly from user input."""

    stale_after_days: float = 7.0
    cutoff: datetime | None = None
    batch_size: int = 1000
    max_batches: int = 5000
    max_seconds: float = 300.0
    dry_run: bool = True
    lock_timeout_s: float = 5.0
    statement_timeout_s: float = 60.0
    pause_s: float = 0.0
    max_rows: int = 1_000_000
    max_retries: int = 3
    stop_file: str = ""
    metrics_dir: str = ""
    expect_fingerprint: str = ""
    max_replication_lag_bytes: int = 64 * 1024 * 1024
    max_lock_waiters: int = 0
    pause_during_vacuum: bool = True
    health_pause_s: float = 2.0
    target_batch_ms: float = 0.0
    max_batch_wal_bytes: int = 0  # 0: the server's wal_buffers / workers
    workers: int = 2  # batches written at once, each on its own connection
    allow_blind_health: bool = False  # sweep although a health signal cannot be read

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["cutoff"] = self.cutoff.isoformat() + "Z" if self.cutoff else None
        return out


def options(
    *,
    stale_after_days: object = 7.0,
    cutoff: object = None,
    batch_size: object = 1000,
    max_batches: object = 5000,
    max_seconds: object = 300.0,
    dry_run: object = True,
    lock_timeout_s: object = 5.0,
    statement_timeout_s: object = 60.0,
    pause_s: object = 0.0,
    max_rows: object = 1_000_000,
    max_retries: object = 3,
    stop_file: object = "",
    metrics_dir: object = "",
    expect_fingerprint: object = "",
    max_replication_lag_bytes: object = 64 * 1024 * 1024,
    max_lock_waiters: object = 0,
    pause_during_vacuum: object = True,
    health_pause_s: object = 2.0,
    target_batch_ms: object = 0.0,
    max_batch_wal_bytes: object = 0,
    workers: object = 2,
    allow_blind_health: object = False,
) -> Options:
    """Check every parameter and return Options; ParameterError names the first bad one.

    ``cutoff`` (ISO 8601 UTC, or None/'') replaces ``stale_after_days`` when given.
    """
    return Options(
        # LiteLLM clamps MANAGED_OBJECT_STALENESS_CUTOFF_DAYS to at least 1; we refuse instead
        # of silently changing what the operator asked for.
        stale_after_days=check_number("stale_after_days", stale_after_days, 1, 3650, "days"),
        cutoff=None if cutoff in (None, "") else check_cutoff("cutoff", cutoff),
        batch_size=check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE),
        max_batches=check_int("max_batches", max_batches, 1, 1_000_000),
        max_seconds=check_number("max_seconds", max_seconds, 1, 7 * 86400, "seconds"),
        dry_run=check_bool("dry_run", dry_run),
        lock_timeout_s=check_number("lock_timeout_s", lock_timeout_s, 0.01, 600, "seconds"),
        statement_timeout_s=check_number("statement_timeout_s", statement_timeout_s, 0.1, 3600, "seconds"),
        pause_s=check_number("pause_s", pause_s, 0, 60, "seconds"),
        max_rows=check_int("max_rows", max_rows, 1, 10**9),
        max_retries=check_int("max_retries", max_retries, 0, 10),
        stop_file=check_path("stop_file", stop_file),
        metrics_dir=check_path("metrics_dir", metrics_dir),
        expect_fingerprint=check_fingerprint("expect_fingerprint", expect_fingerprint),
        max_replication_lag_bytes=check_int("max_replication_lag_bytes", max_replication_lag_bytes, 0, 2**50),
        max_lock_waiters=check_int("max_lock_waiters", max_lock_waiters, 0, 10_000),
        pause_during_vacuum=check_bool("pause_during_vacuum", pause_during_vacuum),
        health_pause_s=check_number("health_pause_s", health_pause_s, 0.05, 600, "seconds"),
        target_batch_ms=check_number("target_batch_ms", target_batch_ms, 0, 600_000, "milliseconds (0 keeps batch_size fixed)"),
        max_batch_wal_bytes=check_int("max_batch_wal_bytes", max_batch_wal_bytes, 0, 2**50),
        workers=check_int("workers", workers, 1, MAX_WORKERS),
        allow_blind_health=check_bool("allow_blind_health", allow_blind_health),
    )


_SECRET_MARKERS = ("password", "passwd", "pgpass", "secret", "token=")


def refuse_secrets(params: dict[str, object]) -> None:
    """ParameterError if any string parameter looks like it carries a credential.

    Papermill writes every parameter into the executed notebook, so credentials must
    come from the environment. The offending value is never echoed.
    """
    for name, value in params.items():
        if isinstance(value, str):
            lowered = value.lower()
            if any(m in lowered for m in _SECRET_MARKERS) or ("://" in value and "@" in value.split("://", 1)[1]):
                raise ParameterError(
                    name, "<redacted>", "no credentials in parameters; set DATABASE_URL or PGPASSWORD in the environment"
                )
