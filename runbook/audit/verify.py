"""The audit trail as a history: every sealed file of the run folder checked against the
ledger's seals, and every seal of the ledger checked for its file (``python -m runbook verify``).

Each file gets one state:

    match    its sha256 is the ledger's seal for its name (the first ``records`` row)
    edited   its sha256 differs from the ledger's seal or, for a file the ledger has no
             seal for, from the ``.sha256`` beside it
    missing  the ledger seals a file name (or a ``.sha256`` names a file) that is not in
             the folder; a path given that does not exist
    unknown  a file the ledger has no seal for

``unknown`` is a failure unless the file's record says why the ledger never saw it and the
ledger agrees: the run wrote nothing (an inspect, a preview or a create_index run, a dry run,
an undo with no run to undo, a sweep or undo that failed before its step ran, a run the
runner found no ledger row for when it sealed the file), the ledger has no ``runs`` row for
its run id, and the file matches its ``.sha256``, its only seal. Anything else unknown (a
stray file, a file without a record or a ``.sha256``, a live run the ledger has a row for
but no seal) is a failure, and so is every edited and missing file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg

from ..db import ledger
from ..db.connect import Database, connect
from ..db.transactions import Conn
from ..errors import LedgerUnavailableError
from ..rules.states import Kind, Status
from ..sql import catalog
from ..sql import ledger as q
from .record import read_record
from .sealing import _read_json_record

__all__ = ["State", "Seal", "Verdict", "sealed_files", "verify_folder", "verify_paths", "read_any_record"]

# What a run folder holds that the runbook seals: executed notebooks and panel records.
SEALED_SUFFIXES = (".ipynb", ".json")


class State(StrEnum):
    """What ``verify`` found for one file."""

    MATCH = "match"
    EDITED = "edited"
    MISSING = "missing"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Seal:
    """The ledger's seal of one file name: the first ``records`` row for it."""

    record_file: str
    run_id: str
    sha256: str
    sealed_at: datetime


@dataclass(frozen=True)
class Verdict:
    """One file's state; ``failed``: it counts against the exit status."""

    path: Path
    state: State
    failed: bool
    detail: str
    run_id: str | None = None
    sha256: str | None = None
    ledger_sha256: str | None = None
    beside_sha256: str | None = None

    def line(self) -> str:
        """The line ``python -m runbook verify`` prints for this file."""
        return f"{self.path}: {self.state} ({self.detail})"


def sealed_files(folder: Path) -> list[Path]:
    """The executed notebooks and JSON records directly in ``folder``, by name. Reads only."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SEALED_SUFFIXES)


def read_any_record(path: Path) -> dict[str, Any] | None:
    """The run record of an executed notebook or a panel's JSON record; None when the file
    holds none or cannot be parsed (an edit may have broken it). Reads only."""
    try:
        return _read_json_record(path) if path.suffix == ".json" else read_record(path)
    except Exception:  # noqa: BLE001 - nbformat and json raise many kinds on a damaged file
        return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _beside(path: Path) -> str | None:
    """The checksum in ``<path>.sha256``, or None when there is none."""
    beside = path.parent / (path.name + ".sha256")
    if not beside.is_file():
        return None
    words = beside.read_text(errors="replace").split()
    return words[0] if words else ""


def _denied(exc: psycopg.errors.InsufficientPrivilege) -> LedgerUnavailableError:
    return LedgerUnavailableError(
        f"this role may not read the ledger ({exc.diag.message_primary}): verify needs SELECT on "
        f"{ledger.SCHEMA}.records and {ledger.SCHEMA}.runs"
    )


def _seals(conn: Conn) -> dict[str, Seal]:
    """Every seal of the ledger by file name; {} without a ledger. Raises
    LedgerUnavailableError when the role may not read it."""
    present = conn.execute(catalog.relation_exists(), {"name": f"{ledger.SCHEMA}.records"}).fetchone()
    if present != (True,):
        return {}
    try:
        rows = conn.execute(q.ledger_seals()).fetchall()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _denied(exc) from None
    return {str(r[0]): Seal(str(r[0]), str(r[1]), str(r[2]), r[3]) for r in rows}


def _has_run(conn: Conn, run_id: str) -> bool:
    """Whether the ledger has a ``runs`` row for ``run_id`` (False without a ledger). Raises
    LedgerUnavailableError when the role may not read it."""
    if conn.execute(q.ledger_present()).fetchone() != (True,):
        return False
    try:
        return conn.execute(q.run_target(), {"run_id": run_id}).fetchone() is not None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _denied(exc) from None


def _wrote_nothing(record: dict[str, Any]) -> str | None:
    """Why the run of ``record`` never wrote a ledger row, as its record tells it; None
    when the record reads as a run that did (or may have)."""
    kind = str(record.get("notebook", ""))
    if kind not in (Kind.SWEEP, Kind.UNDO):
        return f"{kind or 'this notebook'} runs write no ledger row"
    if (record.get("options") or {}).get("dry_run") is True:
        return f"a dry {kind} run writes nothing"
    if record.get("written_by") == "runner" and record.get("ledger") is None:
        return "the run ended before its record, and the runner found no ledger row for it"
    step = (record.get("outcome") or {}).get(kind)
    if step is None:
        return f"its {kind} step never ran (the run failed before it)"
    if isinstance(step, dict) and step.get("status") == Status.NOTHING_TO_DO:
        return f"the {kind} had nothing to do"
    return None


def _classify(path: Path, seal: Seal | None, conn: Conn) -> Verdict:
    """The state of the file at ``path``, given the ledger's seal of its name."""
    if not path.is_file():
        if seal is not None:
            at = seal.sealed_at.isoformat(timespec="seconds")
            return Verdict(path, State.MISSING, True, f"the ledger sealed it for run {seal.run_id} at {at}; no such file",
                           seal.run_id, None, seal.sha256)  # fmt: skip
        return Verdict(path, State.MISSING, True, "no such file, and the ledger has no seal for it")
    digest = _sha256(path)
    beside = _beside(path)
    record = read_any_record(path)
    run_id = str(record["run_id"]) if record and record.get("run_id") else None
    if seal is not None:
        if seal.sha256 == digest:
            note = "" if beside == digest else f"; its .sha256 {'is missing' if beside is None else 'differs'}, the ledger's seal counts"
            return Verdict(path, State.MATCH, False, f"run {seal.run_id}, sha256 {digest}{note}", seal.run_id, digest, seal.sha256, beside)
        return Verdict(
            path, State.EDITED, True,
            f"does NOT match its seal: file sha256 {digest}, the ledger's seal {seal.sha256} (run {seal.run_id}), "
            f"beside it {beside or 'none'}",
            seal.run_id, digest, seal.sha256, beside,
        )  # fmt: skip
    if beside is not None and beside != digest:
        return Verdict(path, State.EDITED, True, f"does NOT match its seal: no seal in the ledger, file sha256 {digest}, its .sha256 {beside}",
                       run_id, digest, None, beside)  # fmt: skip
    if beside is None:
        return Verdict(path, State.UNKNOWN, True, "the ledger has no seal for it and no .sha256 is beside it: not a file the runbook sealed",
                       run_id, digest)  # fmt: skip
    if record is None or run_id is None:
        return Verdict(path, State.UNKNOWN, True, "the ledger has no seal for it and it holds no run record", None, digest, None, beside)
    if _has_run(conn, run_id):
        return Verdict(path, State.UNKNOWN, True, f"the ledger has run {run_id} but no seal for this file name", run_id, digest, None, beside)
    why = _wrote_nothing(record)
    if why is None:
        return Verdict(path, State.UNKNOWN, True, f"its record is of a live {record.get('notebook')} run {run_id} the ledger has no row for",
                       run_id, digest, None, beside)  # fmt: skip
    return Verdict(path, State.UNKNOWN, False, f"expected, not a failure: {why}, so the ledger never saw it; matches its .sha256 (run {run_id})",
                   run_id, digest, None, beside)  # fmt: skip


def verify_paths(paths: Iterable[Path], database: Database) -> list[Verdict]:
    """The state of each file in ``paths`` against the ledger's seals (a path that does not
    exist is ``missing``). Reads only. Raises DatabaseConfigError when the database cannot be
    reached, LedgerUnavailableError when the role may not read the ledger."""
    with connect(database, purpose="verify") as conn:
        seals = _seals(conn)
        return [_classify(p, seals.get(p.name), conn) for p in paths]


def verify_folder(folder: Path, database: Database) -> list[Verdict]:
    """The state of every executed notebook and JSON record in ``folder``, then of every file
    the ledger seals, or a ``.sha256`` names, that is not there (``missing``). Reads only.
    Raises DatabaseConfigError when the database cannot be reached, LedgerUnavailableError
    when the role may not read the ledger."""
    files = sealed_files(folder)
    present = {p.name for p in files}
    with connect(database, purpose="verify") as conn:
        seals = _seals(conn)
        found = [_classify(p, seals.get(p.name), conn) for p in files]
        gone = set(seals) - present
        # A file only its .sha256 remembers (a dry run's, say) deleted: the ledger cannot tell.
        if folder.is_dir():
            gone |= {
                p.name[: -len(".sha256")] for p in folder.glob("*.sha256")
                if p.name[: -len(".sha256")].endswith(SEALED_SUFFIXES) and p.name[: -len(".sha256")] not in present
            }  # fmt: skip
        for name in sorted(gone):
            if name in seals:
                found.append(_classify(folder / name, seals[name], conn))
            else:
                found.append(Verdict(folder / name, State.MISSING, True, "its .sha256 is in the folder, the file is not; the ledger has no seal for it"))
    return found
