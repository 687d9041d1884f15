"""History: what the runbook did to LiteLLM's tables, read back from the ledger and the run folder.

Read-only: READ ONLY transactions, and the run folder's files read, never written. For each
run in the window: who, when, its parameters, rows changed, how it stopped, which undo
undid it, and its executed notebook on this machine checked against the seal in the ledger
(``match``, ``edited``, ``missing``: sealed in the ledger but not here). The backlog over time
comes from the inspect records in the run folder and the sweeps' own counts. With a run id:
its batches, its record, and what undo would restore now (undo's dry run).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..audit.record import read_record
from ..db import ledger
from ..db.transactions import Conn, read_only
from ..errors import RunbookError
from ..rules.params import options
from ..rules.states import Kind
from ..rules.target import DEFAULT_TARGET
from ..rules.targets import CATALOGUE, target_named
from ..sql import history as q
from .undo import undo

__all__ = ["RunEntry", "RunDetail", "HistoryReport", "history"]


@dataclass
class RunEntry:
    """One run as the ledger holds it, and its executed notebook(s) on this machine."""

    run_id: str
    kind: str
    table: str
    target: str
    who: dict[str, Any]
    started_at: datetime
    finished_at: datetime | None
    parameters: dict[str, Any]
    rows_changed: int | None
    stop_reason: str | None
    undoes_run_id: str | None
    undone_by: list[str]
    candidates: int | None  # a sweep's candidates when it started
    outcome: dict[str, Any] | None = None  # the run's result as it recorded it when it ended (runs.outcome)
    files: dict[str, str] = field(default_factory=dict)  # file name -> match, edited, missing


@dataclass
class RunDetail:
    """One run in detail: its batches, its record (the ledger's outcome) and undo's dry run now."""

    run_id: str
    batches: list[dict[str, Any]]
    outcome: dict[str, Any] | None
    undo_now: dict[str, Any] | None  # UndoResult.to_dict() of a dry run; None for an undo run
    undo_error: str = ""


@dataclass
class HistoryReport:
    """What ``history`` found: runs newest first, the backlog points, and one run in detail."""

    days: float
    target: str  # '' for all
    runs: list[RunEntry]
    backlog: list[dict[str, Any]]  # {"at", "target", "candidates", "source"}: inspect records, sweeps' starts
    detail: RunDetail | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report for the record; each run's own full result (``outcome``) left out: the
        ledger keeps it, and a history of long sweeps would carry every batch of every run."""
        out: dict[str, Any] = json_safe(asdict(self))
        for run in out["runs"]:
            run.pop("outcome", None)
        return out


def json_safe(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value.tzinfo else value.isoformat() + "Z"
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _files(run_dir: Path, run_ids: list[str], seals: dict[str, tuple[str, str]]) -> dict[str, dict[str, str]]:
    """Per run id, its executed notebooks in ``run_dir`` (``*_<run id>.ipynb``) and the files
    the ledger sealed for it (``seals``: file name -> (run id, sha256)), each ``match``,
    ``edited``, ``missing`` (sealed, but not in ``run_dir``) or ``not sealed`` (here, but the
    ledger has no seal of it). Reads only."""
    found: dict[str, dict[str, str]] = {rid: {} for rid in run_ids}
    for name, (rid, sha256) in seals.items():
        path = run_dir / name
        if Path(name).name != name:
            found[rid][name] = "not a file name"  # a ledger row naming a path: never opened
        elif not path.is_file():
            found[rid][name] = "missing"
        else:
            found[rid][name] = "match" if hashlib.sha256(path.read_bytes()).hexdigest() == sha256 else "edited"
    executed = sorted(p.name for p in run_dir.glob("*.ipynb")) if run_dir.is_dir() else []  # one listing
    for rid in run_ids:  # executed notebooks of the run the ledger never sealed (verify: unknown)
        for name in (n for n in executed if n.endswith(f"_{rid}.ipynb")):
            found[rid].setdefault(name, "not sealed")
    return found


def _inspect_points(run_dir: Path, target: str) -> list[dict[str, Any]]:
    """The candidates every inspect record in ``run_dir`` counted, by target and time. Reads only."""
    points = []
    for path in sorted(run_dir.glob("*_01_inspect_*.ipynb")) if run_dir.is_dir() else []:
        record = read_record(path)
        found = (record or {}).get("outcome", {}).get(Kind.INSPECT)
        if not found:
            continue
        name = (record or {}).get("target", {}).get("name") or DEFAULT_TARGET
        if target and name != target:
            continue
        at = datetime.fromisoformat(str(found["now_utc"]).replace("Z", ""))
        points.append({"at": at, "target": name, "candidates": int(found["candidates"]), "source": path.name})
    return points


def history(conn: Conn, run_dir: Path, *, target: str = "", days: float = 30.0, run_id: str = "") -> HistoryReport:
    """The runs of the last ``days`` days (of ``target``, or all), newest first, with their
    files in ``run_dir`` checked against the ledger's seals; the backlog over time; and
    ``run_id`` in detail. Reads only: the ledger, the run folder, and undo's dry run.
    A database without a ledger has no runs (an empty report, not an error)."""
    runs: list[RunEntry] = []
    seals: dict[str, tuple[str, str]] = {}
    with read_only(conn):
        if _ledger_exists(conn):
            rows = conn.execute(q.runs_since(), {"days": days, "rule": target, "default_rule": DEFAULT_TARGET}).fetchall()
            runs = [
                RunEntry(
                    run_id=r[0], kind=r[1], table=r[2], target=r[3], who=dict(r[4] or {}), started_at=r[5], finished_at=r[6],
                    parameters=dict(r[7] or {}), rows_changed=r[8], stop_reason=r[9], undoes_run_id=r[10],
                    undone_by=list(r[11] or []), candidates=(r[12] or {}).get("candidates_at_start") if r[1] == Kind.SWEEP else None,
                    outcome=dict(r[12]) if r[12] else None,
                )  # fmt: skip
                for r in rows
            ]
            ids = [r.run_id for r in runs]
            if ids:
                seals = {str(s[0]): (str(s[1]), str(s[2])) for s in conn.execute(q.seals_of(), {"run_ids": ids})}
    files = _files(run_dir, [r.run_id for r in runs], seals)
    for entry in runs:
        entry.files = files.get(entry.run_id, {})
    backlog = _inspect_points(run_dir, target) + [
        {"at": r.started_at.astimezone(timezone.utc).replace(tzinfo=None), "target": r.target, "candidates": r.candidates,
         "source": f"sweep {r.run_id}", "removed": r.rows_changed or 0}
        for r in runs if r.kind == Kind.SWEEP and r.candidates is not None
    ]  # fmt: skip
    backlog.sort(key=lambda p: p["at"])
    detail = _detail(conn, run_id, runs) if run_id else None
    return HistoryReport(days, target, runs, backlog, detail)


def _ledger_exists(conn: Conn) -> bool:
    from ..sql import ledger as ledger_sql

    row = conn.execute(ledger_sql.ledger_present()).fetchone()
    return bool(row and row[0])


def _detail(conn: Conn, run_id: str, runs: list[RunEntry]) -> RunDetail:
    """Run ``run_id``'s batches, record and undo's dry run now. Reads only."""
    with read_only(conn):
        info = ledger.run_info(conn, run_id) if _ledger_exists(conn) else None
        if info is None:
            return RunDetail(run_id, [], None, None, f"run {run_id} is not in this database's ledger")
        batches = conn.execute(q.run_batches(), {"run_id": run_id}).fetchall()
    entry = next((r for r in runs if r.run_id == run_id), None)
    # The run's own account (its result, kept in runs.outcome when it ended) has each batch's
    # duration and WAL, and the pauses; the ledger's batches are what committed.
    recorded = {int(b["number"]): b for b in (entry.outcome.get("batches") or [])} if entry and entry.outcome else {}
    rows = [
        {
            "batch": b[0], "rows": b[1], "committed_at": b[2].astimezone(timezone.utc).replace(tzinfo=None),
            "seconds": recorded.get(b[0], {}).get("seconds"), "wal_bytes": recorded.get(b[0], {}).get("wal_bytes"),
            "archive_file": b[3],
        }
        for b in batches
    ]  # fmt: skip
    outcome = None
    if entry is not None:
        outcome = {
            "stop_reason": entry.stop_reason, "stop_detail": (entry.outcome or {}).get("stop_detail"),
            "rows_changed": entry.rows_changed, "parameters": entry.parameters, "pauses": (entry.outcome or {}).get("pauses"),
            "signals": (entry.outcome or {}).get("signals"),
        }  # fmt: skip
    if info["kind"] != Kind.SWEEP:
        return RunDetail(run_id, rows, outcome, None)
    rule = info["rule"] or DEFAULT_TARGET
    schema = str(info["target"]).split(".", 1)[0]
    try:
        dry = undo(conn, target_named(rule if rule in CATALOGUE else DEFAULT_TARGET, schema), options(), of_run_id=run_id)
        return RunDetail(run_id, rows, outcome, dry.to_dict())
    except RunbookError as exc:
        return RunDetail(run_id, rows, outcome, None, f"{type(exc).__name__}: {exc}")
