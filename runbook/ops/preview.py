"""Preview: exactly the rows the next batch would change, and the SQL that would change them.

Read-only: runs in a READ ONLY transaction and needs only SELECT on the table.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..db.transactions import Conn, check_target, read_only, resolve_cutoff, table_columns
from ..rules.params import Options
from ..rules.target import Target
from ..sql import candidates, catalog, removal

__all__ = ["PreviewRow", "PreviewReport", "preview", "fingerprint", "ROW_HEADERS", "AGE_ROW_HEADERS"]

ROW_HEADERS = ("id", "status", "created_at", "purpose")  # a mark target's rows
AGE_ROW_HEADERS = ("key", "time")  # a delete or clear target's: its rule is the age alone


@dataclass(frozen=True)
class PreviewRow:
    id: str
    status: str | None
    created_at: datetime
    purpose: str


@dataclass
class PreviewReport:
    """The next batch, oldest first, as the sweep will take it if nothing changes meanwhile."""

    target: dict[str, Any]
    cutoff_utc: datetime
    batch_size: int
    candidates: int
    rows: list[PreviewRow]
    fingerprint: str
    sql: dict[str, str]
    parameters: dict[str, Any]
    action: str = "mark"
    archive_bytes: int | None = None  # delete and clear: the next batch's archive lines, uncompressed; None: not readable

    @property
    def headers(self) -> tuple[str, ...]:
        return ROW_HEADERS if self.action == "mark" else AGE_ROW_HEADERS

    def cells(self) -> list[tuple[Any, ...]]:
        """The rows as ``headers`` name their columns."""
        if self.action == "mark":
            return [(r.id, r.status, r.created_at, r.purpose) for r in self.rows]
        return [(r.id, r.created_at) for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "cutoff_utc": self.cutoff_utc.isoformat() + "Z",
            "batch_size": self.batch_size,
            "candidates": self.candidates,
            "ids": [r.id for r in self.rows],
            "fingerprint": self.fingerprint,
            **({} if self.action == "mark" else {"action": self.action, "archive_bytes": self.archive_bytes}),
        }


def fingerprint(target: dict[str, Any], cutoff: datetime, ids: list[str]) -> str:
    """16 hex digits binding a batch: the target (``Target.describe()``: schema.table, the
    rule's purpose and terminal statuses, the new status), the exact cutoff and the batch's
    ids in order. Equal fingerprints: the same rows, chosen by the same rule and cutoff."""
    bound = json.dumps({"target": target, "cutoff": cutoff.isoformat(), "ids": ids}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(bound.encode()).hexdigest()[:16]


def preview(conn: Conn, target: Target, opts: Options) -> PreviewReport:
    """Read the next batch's rows and render the statements the sweep will run. Reads only.

    Raises TargetNotFoundError when the table or a column is missing.
    """
    check_target(conn, target)
    with read_only(conn):
        cutoff = resolve_cutoff(conn, opts.stale_after_days, opts.cutoff)
        if opts.cutoff is None:
            # Whole seconds: printed in full, the cutoff can be given back exactly (the fingerprint binds it).
            cutoff = cutoff.replace(microsecond=0)
        params: dict[str, Any] = {**target.predicate_params(), "cutoff": cutoff, "batch_size": opts.batch_size}
        found = conn.execute(candidates.next_batch_and_count(target), params).fetchall()
        rendered = {
            "next batch (this preview)": candidates.next_batch(target).as_string(conn),
            "sweep: candidate snapshot": ";\n".join(s.as_string(conn) for s in candidates.snapshot(target)),
            "sweep: keyset step": candidates.snapshot_next().as_string(conn),
        }
        archive_bytes = None
        if target.marks:
            rendered["sweep: batch update"] = candidates.batch_update(target).as_string(conn)
        else:
            json_columns = [n for n, t, _ in table_columns(conn, target) if t in ("json", "jsonb")]
            rendered["sweep: lock and archive the batch's rows"] = removal.archive_rows(target, json_columns).as_string(conn)
            action = removal.delete_batch(target) if target.action == "delete" else removal.clear_batch(target)
            rendered[f"sweep: {target.action} them with the batch's ledger row"] = action.as_string(conn)
            table = candidates.table(target).as_string(conn)
            readable = conn.execute(catalog.privilege(), {"table": table, "column": None, "privilege": "SELECT"}).fetchone()
            if readable and readable[0]:
                row = conn.execute(candidates.next_batch_archive_bytes(target), params).fetchone()
                archive_bytes = int(row[1]) if row else 0
    rows = [PreviewRow(str(r[0]), None if r[1] is None else str(r[1]), r[2], "" if r[3] is None else str(r[3])) for r in found]
    return PreviewReport(
        target=target.describe(),
        cutoff_utc=cutoff,
        batch_size=opts.batch_size,
        candidates=int(found[0][4]) if found else 0,
        rows=rows,
        fingerprint=fingerprint(target.describe(), cutoff, [r.id for r in rows]),
        sql=rendered,
        action=target.action,
        archive_bytes=archive_bytes,
        parameters={
            "cutoff": cutoff.isoformat(sep=" "),
            **({"purpose": target.purpose, "terminal": list(target.terminal_statuses), "new_status": target.new_status}
               if target.marks else {"ids": "the next batch's keys, as above"}),
            "batch_size": opts.batch_size,
        },
    )
