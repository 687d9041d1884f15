"""Inspect: how many stale rows there are, what they look like, what a sweep would cost.

Read-only: everything runs in READ ONLY transactions and needs only SELECT on the table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..db.connect import redact
from ..db.transactions import Conn, check_target, db_now_utc, read_only, resolve_cutoff
from ..rules.params import Options
from ..rules.target import KNOWN_STATUSES, Target
from ..rules.targets import CATALOGUE
from ..sql import catalog
from ..sql import ledger as ledger_sql
from ..sql.candidates import breakdown, next_batch_plan, payload_size
from ..sql.index import create_index

__all__ = ["Count", "InspectReport", "inspect", "index_suggestion", "finds_by_full_scan"]

AGE_BUCKETS = ("<1d", "1-7d", "7-30d", "30-90d", ">=90d")


@dataclass(frozen=True)
class Count:
    """Rows in one group, and how many of them are sweep candidates."""

    label: str
    rows: int
    candidates: int


@dataclass
class InspectReport:
    """What inspect found. ``warnings`` are the traps an operator must see before a sweep."""

    target: dict[str, Any]
    database: str
    now_utc: datetime
    cutoff_utc: datetime
    batch_size: int
    candidates: int
    oldest_candidate: datetime | None
    batches_needed: int
    total_rows: int
    by_status: list[Count]
    by_purpose: list[Count]
    by_age: list[Count]
    null_status_stale: int
    incomplete_stale: int
    plan: dict[str, Any]
    full_scan: bool
    index_suggestion: str
    estimated_wal_bytes: int = 0
    max_wal_size_bytes: int = 0
    table_bytes: int = 0  # the heap
    toast_bytes: int = 0  # TOAST, with its index
    dead_tuples: int = 0
    last_vacuum: datetime | None = None  # the latest VACUUM or autovacuum, if any
    action: str = "mark"  # what the sweep does to a candidate: mark, delete, clear
    frees_bytes: int = 0  # delete and clear: space the sweep frees for reuse (after VACUUM), an estimate
    litellm_cleans: bool = True  # False: nothing in LiteLLM ever cleans this table (or these columns)
    litellm_hours: float | None = None  # LiteLLM's own job, at its defaults, to drain these candidates
    measured_rows_per_s: float | None = None  # this table's finished sweeps in the ledger, if any
    sweep_seconds: float | None = None  # the candidates at that measured rate
    warnings: list[str] = field(default_factory=list)
    unknown_statuses: list[Count] = field(default_factory=list)  # not in KNOWN_STATUSES nor the rule's

    def to_dict(self) -> dict[str, Any]:
        def conv(value: Any) -> Any:
            if isinstance(value, datetime):
                return value.isoformat() + "Z"
            if isinstance(value, Count):
                return {"label": value.label, "rows": value.rows, "candidates": value.candidates}
            if isinstance(value, list):
                return [conv(v) for v in value]
            if isinstance(value, dict):
                return {k: conv(v) for k, v in value.items()}
            return value

        return {k: conv(v) for k, v in self.__dict__.items() if k != "plan"}


def index_suggestion(target: Target, conn: Conn) -> str:
    """The partial index's CREATE INDEX statement (``sql.index.create_index``), rendered for display."""
    return create_index(target).as_string(conn)


def batch_plan(conn: Conn, target: Target, params: dict[str, Any]) -> dict[str, Any]:
    """The plan of the next batch's search (EXPLAIN, not run). ``params``: the predicate's
    and %(batch_size)s."""
    row = conn.execute(next_batch_plan(target), params).fetchone()
    doc = row[0] if row else []
    if isinstance(doc, str):
        doc = json.loads(doc)
    return dict(doc[0]) if doc else {}


def finds_by_full_scan(conn: Conn, target: Target, params: dict[str, Any], plan: dict[str, Any] | None = None) -> bool:
    """Whether finding the next batch's candidates reads the whole table (no index serves the
    rule). ``params``: the predicate's and %(batch_size)s; ``plan``: ``batch_plan``'s, when
    already read. Reads only the catalog and the plan; call it in a read-only transaction."""
    if not target.status_rule:
        # An age rule can use any index leading with its time column (the planner may still
        # scan when most rows are old); a mark rule reads status and purpose too: only its plan tells.
        indexed = conn.execute(
            catalog.time_index(), {"schema": target.schema, "table": target.table, "column": target.time_column}
        ).fetchone()
        return not (indexed and indexed[0])
    return _scans_table_fully(plan if plan is not None else batch_plan(conn, target, params), target.table)


def _scans_table_fully(plan: Any, table: str) -> bool:
    if isinstance(plan, dict):
        if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") == table:
            return True
        return any(_scans_table_fully(v, table) for v in plan.values())
    if isinstance(plan, list):
        return any(_scans_table_fully(v, table) for v in plan)
    return False


def _group(rows: list[tuple[Any, ...]], index: int, labels: tuple[str, ...] | None = None) -> list[Count]:
    totals: dict[str, list[int]] = {}
    for row in rows:
        label = "NULL" if row[index] is None else str(row[index])
        entry = totals.setdefault(label, [0, 0])
        entry[0] += int(row[5])
        entry[1] += int(row[5]) if row[3] else 0
    order = list(labels) if labels else sorted(totals, key=lambda k: -totals[k][0])
    return [Count(k, totals[k][0], totals[k][1]) for k in order if k in totals]


def inspect(conn: Conn, target: Target, opts: Options) -> InspectReport:
    """Count and describe the candidates; EXPLAIN one batch. Reads only.

    Raises TargetNotFoundError when the table or a column is missing.
    """
    check_target(conn, target)
    with read_only(conn):
        now = db_now_utc(conn)
        cutoff = resolve_cutoff(conn, opts.stale_after_days, opts.cutoff, now=now)
        params = {**target.predicate_params(), "cutoff": cutoff, "now": now, "batch_size": opts.batch_size}
        rows = conn.execute(breakdown(target), params).fetchall()
        payload_bytes = conn.execute(payload_size(target), params).fetchone() if target.action == "clear" else None
        plan = batch_plan(conn, target, params)
        full_scan = finds_by_full_scan(conn, target, params, plan)
        suggestion = index_suggestion(target, conn)
        wal_row = conn.execute(catalog.max_wal_size()).fetchone()
        stats = conn.execute(catalog.table_stats(), {"schema": target.schema, "table": target.table}).fetchone()
        rate_row = None
        present = conn.execute(ledger_sql.ledger_present()).fetchone()
        if present and present[0]:
            rate_row = conn.execute(ledger_sql.sweep_rate(), {"target": f"{target.schema}.{target.table}"}).fetchone()
        zone_row = conn.execute(catalog.session_timezone()).fetchone()
        database = redact(conn.info.dsn)

    candidates = sum(int(r[5]) for r in rows if r[3])
    oldest = min((r[6] for r in rows if r[3]), default=None)
    of_purpose_stale = [r for r in rows if r[0] == target.purpose and r[4]] if target.status_rule else []
    null_stale = sum(int(r[5]) for r in of_purpose_stale if r[1] is None)
    incomplete_stale = sum(int(r[5]) for r in of_purpose_stale if r[1] == "incomplete")

    max_wal = int(wal_row[0]) if wal_row else 0
    total = sum(int(r[5]) for r in rows)
    share = candidates / total if total else 0.0
    heap, toast = (int(stats[0]), int(stats[1])) if stats else (0, 0)
    if target.marks:
        # Measured by bench/bench.py: ~10 KB of WAL per swept row on LiteLLM's six indexes, up
        # to ~18 KB when checkpoints run during the sweep (full-page images).
        estimated_wal, frees = candidates * 10 * 1024, 0
    elif target.action == "delete":
        # A delete logs ~100 bytes a row, plus a full-page image of every heap and TOAST page it
        # touches first after a checkpoint: at most the candidates' share of both.
        frees = int(share * (heap + toast))
        estimated_wal = candidates * 100 + frees
    else:
        # A clear writes a new version of each row (without its payloads) and frees the payloads' TOAST.
        frees = int(payload_bytes[0] or 0) if payload_bytes else 0
        estimated_wal = int(share * heap) * 2 + candidates * 200
    warnings: list[str] = []
    zone, offset = (str(zone_row[0]), int(zone_row[1])) if zone_row else ("UTC", 0)
    if offset:
        # LiteLLM binds its cutoff as timestamptz; the column is timestamp without time zone
        # holding UTC, so PostgreSQL reads the column in the session's TimeZone.
        hours = f"{abs(offset) / 3600:g} hour(s) {'later' if offset > 0 else 'earlier'}"
        warnings.append(
            f"The database's TimeZone is {zone} (UTC{'+' if offset > 0 else '-'}{abs(offset) // 3600:02d}:"
            f"{abs(offset) % 3600 // 60:02d} now): LiteLLM's own jobs bind their cutoff as timestamptz against these "
            f"timestamp-without-time-zone columns, so their cutoff falls {hours} than the one they mean. "
            "This runbook binds its cutoff in UTC: it selects the rows LiteLLM means to, not the ones it does."
        )
    by_status = _group(rows, 1)
    known = {*KNOWN_STATUSES, *target.terminal_statuses, target.new_status, "NULL"}
    unknown = [c for c in by_status if c.label not in known] if target.status_rule else []
    if unknown:
        # The rule is a deny-list: a status LiteLLM starts writing tomorrow is a candidate today.
        listed = ", ".join(f"'{c.label}' ({c.rows:,} rows, {c.candidates:,} candidates)" for c in unknown)
        warnings.append(
            f"{len(unknown)} status(es) this runbook has not seen before: {listed}. The rule leaves out only the "
            f"terminal statuses {list(target.terminal_statuses)}, so a stale '{target.purpose}' row with any other "
            "status is swept: find out what LiteLLM means by these before a live sweep."
        )
    if null_stale:
        warnings.append(
            f"{null_stale:,} '{target.purpose}' rows older than the cutoff have a NULL status: the production "
            "predicate (status NOT IN (...)) never matches NULL, so neither LiteLLM nor this sweep will expire them."
        )
    if incomplete_stale and "incomplete" not in target.terminal_statuses:
        warnings.append(
            f"{incomplete_stale:,} candidates have status 'incomplete', which LiteLLM treats as terminal for "
            "responses but the production sweep does not: they will be marked stale_expired."
        )
    if max_wal and estimated_wal > max_wal:
        warnings.append(
            f"Sweeping {candidates:,} rows writes about {estimated_wal / 2**30:.1f}-{estimated_wal * 1.8 / 2**30:.1f} GiB "
            f"of WAL, more than max_wal_size ({max_wal / 2**30:.1f} GiB): checkpoints will run during the sweep, "
            "rows right after each write more WAL (the sweep shrinks its batches to stay within a share of wal_buffers), "
            "and standbys may lag (the sweep pauses). "
            "Consider wal_compression = lz4 where the server has it (pglz costs CPU: on 2 cores it made the sweep "
            "3x slower), or spreading the work over several runs with max_batches."
        )
    if full_scan and target.status_rule:
        warnings.append(
            f"Finding one batch scans all of {target.table} (no index on {target.status_column}, "
            f"{target.purpose_column} or {target.time_column}); the production loop repeats that scan for "
            "every batch. This runbook's sweep scans once. To make every search cheap, an index can be built "
            f"without blocking writes: {suggestion}"
        )
    elif full_scan:
        warnings.append(
            f"No index of {target.table} leads with {target.time_column}: finding rows by age scans the whole table "
            "(a DELETE ... WHERE it < cutoff pasted into psql repeats that scan for every batch). This runbook's sweep "
            f"scans once per pass. To make every search cheap, an index can be built without blocking writes: {suggestion}"
        )
    entry = CATALOGUE.get(target.name)
    per_hour = entry.litellm_rows_per_hour if entry and entry.target.table == target.table else None
    never = bool(entry and entry.target.table == target.table and entry.litellm.startswith("none: LiteLLM never"))
    rate = float(rate_row[0]) / float(rate_row[1]) if rate_row and rate_row[0] and rate_row[1] else None
    return InspectReport(
        table_bytes=int(stats[0]) if stats else 0,
        toast_bytes=int(stats[1]) if stats else 0,
        dead_tuples=int(stats[2]) if stats else 0,
        last_vacuum=stats[3].astimezone(timezone.utc).replace(tzinfo=None) if stats and stats[3] else None,
        litellm_hours=candidates / per_hour if per_hour else None,
        litellm_cleans=not never,
        action=target.action,
        frees_bytes=frees,
        measured_rows_per_s=round(rate, 1) if rate else None,
        sweep_seconds=round(candidates / rate, 1) if rate else None,
        target=target.describe(),
        database=database,
        now_utc=now,
        cutoff_utc=cutoff,
        batch_size=opts.batch_size,
        candidates=candidates,
        oldest_candidate=oldest,
        batches_needed=math.ceil(candidates / opts.batch_size),
        total_rows=total,
        by_status=by_status,
        by_purpose=_group(rows, 0),
        by_age=_group(rows, 2, AGE_BUCKETS),
        null_status_stale=null_stale,
        incomplete_stale=incomplete_stale,
        plan=plan,
        full_scan=full_scan,
        index_suggestion=suggestion,
        estimated_wal_bytes=estimated_wal,
        max_wal_size_bytes=max_wal,
        warnings=warnings,
        unknown_statuses=unknown,
    )
