"""Undo of a delete or clear: the archived rows put back, from files the ledger sealed.

What it reads: the run's committed batches in the ledger (``batches.archive_file``,
``archive_sha256``), and only those files: a file a crashed batch left (written, its batch
never committed) is never read. Every file is checked against its sha256 before anything
is written (``verify_archive``), and again as it is read.

What it writes: per batch of at most ``batch_size`` archived rows, one transaction that
inserts them back exactly as they were (delete: ``ON CONFLICT DO NOTHING``, so a row whose
key exists again is left alone and counted) or puts the payloads back where the columns
still hold ``'{}'`` (clear), with the undo run's ledger row in the same statement.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..audit.archive import archive_root, read_batch
from ..db import ledger
from ..db.transactions import Conn, table_columns
from ..errors import ArchiveError
from ..rules.params import Options
from ..rules.states import StopReason
from ..rules.target import Target
from ..sql import catalog, removal
from .live import BatchResult, LiveRun, set_batch_settings, utc_now
from .rounds import with_retries
from .stops import Stop, wait_until_healthy

__all__ = ["ArchivedBatch", "verify_archive", "restorable_now", "restore_from_archive"]


@dataclass(frozen=True)
class ArchivedBatch:
    """A committed batch's archive file, as its ledger row names it."""

    batch: int
    root: Path
    name: str
    sha256: str
    rows: int


class Restoring(Protocol):
    """What a restore adds to (``undo.UndoResult``)."""

    run_id: str | None
    batches: list[BatchResult]
    restored: int
    changed_since: int
    retries: list[str]
    pauses: list[dict[str, Any]]
    warnings: list[str]
    signals: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_archive(conn: Conn, of_run_id: str, opts: Options) -> list[ArchivedBatch]:
    """The archive files of run ``of_run_id``'s committed batches, newest batch first, each
    checked against the sha256 its batch committed. Reads only. ArchiveError when a
    file is missing or differs, or when no committed batch of the run has an archive
    while it changed rows (``archive=False``)."""
    root = archive_root(opts.archive_dir)
    found, unarchived = [], 0
    for b in ledger.archived_batches(conn, of_run_id):
        if b["archive_file"] is None:
            unarchived += int(b["rows_changed"])
            continue
        item = ArchivedBatch(int(b["batch"]), root, str(b["archive_file"]), str(b["archive_sha256"]), int(b["archive_rows"]))
        if Path(item.name).is_absolute() or ".." in Path(item.name).parts:
            raise ArchiveError(f"run {of_run_id} batch {item.batch} names archive file {item.name!r}, not a name under the "
                               "archive folder: undo refused, nothing written")  # fmt: skip
        path = root / item.name
        try:
            digest = _sha256(path)
        except OSError as exc:
            raise ArchiveError(
                f"archive file {path} of run {of_run_id} batch {item.batch} cannot be read ({exc.strerror}): undo refused, "
                "nothing written (give archive_dir if the archive was moved)"
            ) from None
        if digest != item.sha256:
            raise ArchiveError(
                f"archive file {path} of run {of_run_id} batch {item.batch} has sha256 {digest}, but its batch committed "
                f"{item.sha256}: the file was changed after the fact; undo refused, nothing written"
            )
        found.append(item)
    if unarchived:
        raise ArchiveError(
            f"run {of_run_id} changed {unarchived:,} row(s) in batches without an archive (archive=False): they cannot "
            "be restored; undo refused, nothing written"
        )
    return found


def restorable_now(conn: Conn, target: Target, files: list[ArchivedBatch], chunk: int = 1000) -> int:
    """How many rows of ``files`` an undo would put back now (absent keys; payloads still
    empty). Reads the files (checked again) and the table, in READ ONLY transactions."""
    from ..db.transactions import read_only

    count = 0
    for item in files:
        lines = read_batch(item.root, item.name, item.sha256)
        for at in range(0, len(lines), chunk):
            with read_only(conn):
                row = conn.execute(removal.restorable(target), {"lines": lines[at : at + chunk]}).fetchone()
            count += int(row[0]) if row else 0
    return count


def restore_from_archive(
    conn: Conn, target: Target, opts: Options, files: list[ArchivedBatch], result: Restoring, run: LiveRun
) -> Stop:
    """Put back every row of ``files`` in batches of at most ``batch_size``, each its own
    transaction with its ledger row; return the stop it ended with (``done`` when all
    were put back). Stops and health pauses between batches, as the sweep's."""
    columns = [(name, type_) for name, type_, generated in table_columns(conn, target) if not generated]
    row = conn.execute(catalog.run_start()).fetchone()
    began = row[0] if row else None
    batch = run.first_batch
    for item in files:
        lines = read_batch(item.root, item.name, item.sha256)
        # Only the columns the archive has: a column a later LiteLLM migration added gets its
        # default, as it would for a row inserted now (one file's lines share their columns).
        archived = set(json.loads(lines[0])) if lines else set()
        statement = (
            removal.reinsert(target, [c for c in columns if c[0] in archived]) if target.action == "delete"
            else removal.restore_payloads(target)
        )  # fmt: skip
        at = 0
        while at < len(lines):
            reason = run.stopper.reason(len(result.batches)) or wait_until_healthy(
                conn, target, opts, run.stopper, result, batch, began
            )
            if reason:
                return run.stopper.stop(reason)
            t0 = time.monotonic()

            def work(attempt: int, at: int = at, batch: int = batch) -> tuple[int, int]:
                chunk = lines[at : at + max(1, opts.batch_size >> attempt)]
                with conn.transaction():
                    set_batch_settings(conn, opts)
                    done = conn.execute(statement, {"lines": chunk, "run_id": result.run_id, "batch": batch}).fetchone()
                return len(chunk), int(done[0]) if done else 0

            tried = with_retries(work, opts, f"batch {batch}")
            result.retries += tried.notes
            if tried.value is None:
                assert tried.stop is not None
                return tried.stop
            taken, restored = tried.value
            result.batches.append(BatchResult(batch, taken, restored, round(time.monotonic() - t0, 4), utc_now()))
            result.restored += restored
            result.changed_since += taken - restored
            at += taken
            batch += 1
    return Stop(StopReason.DONE)
