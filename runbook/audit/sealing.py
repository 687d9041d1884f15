"""Sealing an executed notebook, however its run ended: the record the kernel could not
write, the file made read-only, its checksum beside it and in the ledger.

A kernel writes its own record (``Run.finish``), also when a step fails. When it cannot
(killed, its process gone, the runner interrupted), the runner finishes for it:

1. ends the dead kernel's database sessions (``pg_terminate_backend`` of the sessions
   whose application name carries the run id), and waits until they are gone, so that no
   batch of it can still commit after the ledger was read;
2. closes the ledger's ``runs`` row if the kernel left it open (``stop_reason`` =
   ``killed`` or ``interrupted``, ``rows_changed`` summed from the committed batches);
3. appends a record to the notebook: what the ledger says the run did, and why the
   runner wrote it.

Then, for every run: the notebook is made read-only, ``<name>.sha256`` is written beside
it and, when the run has a ledger row, the checksum is added to the ledger's insert-only
``records`` (file name, run, sha256): a file edited later no longer matches the first
checksum recorded for its name (``verify``), and a later row cannot replace that one.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from ..db import ledger
from ..db.connect import Database, connect
from ..db.lock import lock_key
from ..db.transactions import Conn
from ..rules.states import Kind
from ..rules.target import Target
from ..sql import catalog
from ..sql import ledger as q
from ..version import PROJECT_DIR
from .record import RECORD_KEY, read_record

__all__ = ["run_dir", "executed_name", "run_of", "seal", "seal_record_file", "open_notebook", "seal_notebook_copy", "verify", "Verified"]


def run_dir() -> Path:
    """Where executed notebooks and records go: ``$RUNBOOK_RUN_DIR`` or ``runs/`` of the checkout."""
    import os

    return Path(os.environ.get("RUNBOOK_RUN_DIR", PROJECT_DIR / "runs"))


_EXECUTED = re.compile(r"^[0-9]{8}T[0-9]{6}Z_(?P<rest>.+)\.ipynb$")


def _stamp() -> str:
    """Now, UTC, as the sealed files' names begin: ``20261203T134100Z``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def executed_name(stem: str, run_id: str) -> str:
    """The name of an executed (or sealed copy of a) notebook: ``<UTC time>_<notebook>_<run
    id>.ipynb``, so a folder lists in time order and a run's files end in ``_<run id>.ipynb``."""
    return f"{_stamp()}_{stem}_{run_id}.ipynb"


def run_of(name: str, stems: list[str]) -> str | None:
    """The run id in an ``executed_name`` (``stems``: the notebooks it may be a copy of, longest
    first, since run ids and notebook names both hold underscores); None for other names."""
    match = _EXECUTED.match(name)
    if match is None:
        return None
    rest = match["rest"]
    stem = next((s for s in stems if rest.startswith(s + "_")), None)
    return rest[len(stem) + 1 :] if stem else None


def _exists(conn: Conn, table: str) -> bool:
    """Whether the ledger has table ``table`` (a dry run never created it)."""
    return conn.execute(catalog.relation_exists(), {"name": f"{ledger.SCHEMA}.{table}"}).fetchone() == (True,)


def _end_sessions(conn: Conn, run_id: str, wait_s: float = 15.0) -> None:
    """Terminate a dead kernel's sessions and wait until they are gone (or ``wait_s``)."""
    pids = [int(r[0]) for r in conn.execute(catalog.sessions_of_run(), {"run_id": run_id}).fetchall()]
    for pid in pids:
        try:
            conn.execute(catalog.terminate_backend(), {"pid": pid})
        except psycopg.Error:  # not ours to end: wait for it instead
            pass
    deadline = time.monotonic() + wait_s
    while pids and time.monotonic() < deadline:
        if not conn.execute(catalog.sessions_of_run(), {"run_id": run_id}).fetchall():
            return
        time.sleep(0.1)


def _ledger_summary(conn: Conn, run_id: str) -> dict[str, Any] | None:
    """The ledger's account of run ``run_id``: its row and its committed batches."""
    if not _exists(conn, "runs"):
        return None
    row = conn.execute(q.run_summary(), {"run_id": run_id}).fetchone()
    if row is None:
        return None
    keys = ("kind", "target", "stop_reason", "rows_changed", "finished", "batches", "rows_in_batches")
    return dict(zip(keys, row, strict=True))


def _append_record(path: Path, record: dict[str, Any]) -> None:
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cell = nbformat.v4.new_code_cell("# The run ended before the kernel wrote its record: the runner wrote this one.")
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={"application/json": record, "text/plain": f"run {record['run_id']} ({record['notebook']}): {record['outcome']['status']}"},
            metadata={RECORD_KEY: {"kind": "run_record", "written_by": "runner"}},
        )
    ]
    nb.cells.append(cell)
    nbformat.write(nb, str(path))


@contextmanager
def _target_lock(conn: Conn, run_id: str, wait_s: float = 30.0) -> Iterator[bool]:
    """Hold the sweep lock of run ``run_id``'s target while the block writes its ledger row:
    a least-privilege sweeper may update a ``runs`` row only then (row security), and no
    other sweep or undo of that target runs meanwhile. Yields False when the run has no
    ledger row or the lock stayed taken for ``wait_s``."""
    row = conn.execute(q.run_target(), {"run_id": run_id}).fetchone()
    if row is None:
        yield False
        return
    schema, _, table = str(row[0]).partition(".")
    key = lock_key(Target(schema=schema, table=table))
    deadline = time.monotonic() + wait_s
    while conn.execute(catalog.try_advisory_lock(), {"key": key}).fetchone() != (True,):
        if time.monotonic() > deadline:
            yield False
            return
        time.sleep(0.2)
    try:
        yield True
    finally:
        conn.execute(catalog.advisory_unlock(), {"key": key})


def _store_checksum(conn: Conn, run_id: str, digest: str, name: str) -> bool:
    """Add the sealed file's checksum to the ledger's insert-only ``records`` (when the run
    has a ledger row); False when it could not. The first row for a file name is its seal."""
    if not _exists(conn, "records"):
        return False
    with conn.transaction():
        cur = conn.execute(q.insert_record(), {"record_file": name, "sha256": digest, "run_id": run_id})
    return cur.rowcount == 1


def seal(path: Path, *, kind: str, run_id: str, error: str | None, ended: str, database: Database | None) -> str:
    """Seal the executed notebook at ``path``; return its sha256.

    ``ended``: how the run ended as the runner saw it (``succeeded``, ``failed``,
    ``interrupted``, ``killed``). Writes: the record the kernel could not (appended to
    the notebook), the ledger's open ``runs`` row closed, ``<path>.sha256``, the file's
    mode 0444, and the checksum in the ledger. A database that cannot be reached only
    leaves the ledger out; the file is sealed regardless.
    """
    conn: Conn | None = None
    if database is not None:
        try:
            conn = connect(database, purpose=f"runner/seal-{run_id}")
        except Exception as exc:  # noqa: BLE001 - the file is sealed even when the database is gone
            error = f"{error or ''}; the ledger could not be reached to seal the run: {type(exc).__name__}".lstrip("; ")
    try:
        if path.exists() and read_record(path) is None:
            summary: dict[str, Any] | None = None
            if conn is not None:
                _end_sessions(conn, run_id)
                summary = _ledger_summary(conn, run_id)
                if summary is not None and not summary["finished"]:
                    with _target_lock(conn, run_id) as held:
                        if held:
                            ledger.finish_run(conn, run_id, ended, {"status": ended, "error": error, "closed_by": "runner"})
                    summary = _ledger_summary(conn, run_id)
            _append_record(path, {
                "record_version": 1, "run_id": run_id, "notebook": kind, "written_by": "runner",
                "outcome": {"status": ended, "error": error}, "ledger": summary,
            })  # fmt: skip
        if not path.exists():
            return ""
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        (path.parent / (path.name + ".sha256")).write_text(f"{digest}  {path.name}\n")
        path.chmod(0o444)
        if conn is not None and kind in (Kind.SWEEP, Kind.UNDO):
            try:
                _store_checksum(conn, run_id, digest, path.name)
            except psycopg.Error:
                pass  # no ledger (a dry run) or no right to it: the .sha256 file stands
        return digest
    finally:
        if conn is not None:
            conn.close()


def seal_record_file(run_dir: Path, *, kind: str, run_id: str, record: dict[str, Any], conn: Conn | None) -> Path:
    """Write a run's record as a sealed JSON file in ``run_dir``: for runs no notebook file
    holds, a sweep executed from the JupyterLab panel. Writes
    ``<UTC time>_panel_<kind>_<run_id>.json`` (read-only), its ``.sha256``, and the
    checksum in the run's ledger row when ``conn`` is given."""
    import json

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"{_stamp()}_panel_{kind}_{run_id}.json"
    path.write_text(json.dumps({RECORD_KEY: record}, indent=1, default=str) + "\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (run_dir / (path.name + ".sha256")).write_text(f"{digest}  {path.name}\n")
    path.chmod(0o444)
    if conn is not None:
        try:
            _store_checksum(conn, run_id, digest, path.name)
        except psycopg.Error:
            pass  # the .sha256 file stands
    return path


def open_notebook() -> Path | None:
    """The notebook file a JupyterLab kernel runs (``JPY_SESSION_NAME``, the notebook's path
    from JupyterLab's root; the kernel's folder is the notebook's), or None headless."""
    import os

    name = os.environ.get("JPY_SESSION_NAME")
    if not name:
        return None
    path = Path.cwd() / Path(name).name
    return path if path.is_file() and path.suffix == ".ipynb" else None


def seal_notebook_copy(run_dir: Path, *, run_id: str, conn: Conn | None) -> Path | None:
    """A sealed copy of the notebook open in JupyterLab as it stands on disk (its last save)
    beside a live action's record: ``<UTC time>_<notebook>_<run_id>.ipynb`` in ``run_dir``,
    read-only, its ``.sha256``, and the checksum in the run's ledger row when ``conn`` is
    given. None (nothing written) outside JupyterLab. A closed tab or a dead kernel later
    loses nothing of what was on disk then."""
    source = open_notebook()
    if source is None:
        return None
    path = run_dir / executed_name(source.stem, run_id)
    path.write_bytes(source.read_bytes())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (run_dir / (path.name + ".sha256")).write_text(f"{digest}  {path.name}\n")
    path.chmod(0o444)
    if conn is not None:
        try:
            _store_checksum(conn, run_id, digest, path.name)
        except psycopg.Error:
            pass  # the .sha256 file stands
    return path


@dataclass(frozen=True)
class Verified:
    """What ``verify`` found: the file's checksum, and the ledger's for its run (None: none)."""

    path: Path
    run_id: str | None
    sha256: str
    ledger_sha256: str | None  # the first checksum the ledger's records hold for this file name
    beside_sha256: str | None

    in_ledger: bool  # the ledger holds a seal for this file name (a live sweep or undo)

    @property
    def ok(self) -> bool:
        """The file is what was sealed: its checksum file agrees and, for a run in the
        ledger, so does the checksum stored there."""
        return self.beside_sha256 == self.sha256 and (not self.in_ledger or self.ledger_sha256 == self.sha256)


def _read_json_record(path: Path) -> dict[str, Any] | None:
    import json

    found = json.loads(path.read_text()).get(RECORD_KEY)
    return dict(found) if isinstance(found, dict) else None


def verify(path: Path, database: Database) -> Verified:
    """Compare an executed notebook with the checksum its run's ledger row keeps. Reads only."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    beside_file = path.parent / (path.name + ".sha256")
    beside = beside_file.read_text().split()[0] if beside_file.exists() else None
    record = _read_json_record(path) if path.suffix == ".json" else read_record(path)
    run_id = str(record["run_id"]) if record else None
    stored: str | None = None
    in_ledger = False
    with connect(database, purpose="verify") as conn:
        if _exists(conn, "records"):
            # By the file's name, not the run id inside it: an edited file could name any run.
            row = conn.execute(q.first_seal(), {"record_file": path.name}).fetchone()
            in_ledger = row is not None
            stored = str(row[0]) if row else None
    return Verified(path, run_id, digest, stored, beside, in_ledger)
