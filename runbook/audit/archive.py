"""The archive: every row a sweep deletes or clears, whole, on disk before its batch commits.

One gzip-compressed JSON Lines file per batch, ``<archive_dir>/<run id>/batch-NNNNNN-<random>.jsonl.gz``:
one line per row, the row as PostgreSQL's ``row_to_json(row)`` writes it (column names as
keys, timestamps in ISO 8601, numbers exact), plus ``"_sql_null": [...]`` naming the
json/jsonb columns that were SQL NULL (JSON cannot tell them from a JSON ``null``). Any
tool reads it: ``zcat FILE | jq``, pandas ``read_json(FILE, lines=True)``, DuckDB
``SELECT * FROM read_json_auto('archive/*/*.jsonl.gz')``.

How a batch uses it (``runbook.ops.rounds``): lock the rows and read them as lines, write
the file here (``write_batch``: created exclusively, fsynced, and its folder fsynced), then
delete or clear exactly those locked rows and insert the batch's ledger row, which names
the file and its sha256, in one statement, and commit. A crash before that commit leaves
a file no committed batch names: restore and reports only read files the ledger names,
and ``read_batch`` refuses a file whose bytes are not the ones the ledger sealed.

Files are read-only and the operator's alone (0400, in 0700 folders): they hold prompts and responses.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArchiveError
from ..version import PROJECT_DIR

__all__ = ["SQL_NULL_KEY", "ArchiveFile", "archive_root", "write_batch", "read_batch"]

SQL_NULL_KEY = "_sql_null"  # a line's list of json/jsonb columns that were SQL NULL


@dataclass(frozen=True)
class ArchiveFile:
    """One batch's archive: its name under the archive folder, sha256 of its bytes, rows, size."""

    name: str
    sha256: str
    rows: int
    bytes: int


def archive_root(archive_dir: str = "") -> Path:
    """The archive folder: ``archive_dir`` when given, else ``$RUNBOOK_ARCHIVE_DIR``, else
    ``archive/`` of the checkout (beside ``runs/``, git-ignored)."""
    if archive_dir:
        return Path(archive_dir)
    return Path(os.environ.get("RUNBOOK_ARCHIVE_DIR", PROJECT_DIR / "archive"))


def _compress(raw: bytes) -> bytes:
    """``raw`` as one gzip member. The archive is written inside a batch's transaction, so its
    time holds row locks: ISA-L's level 2 (measured on SpendLogs rows: 1.5 GB/s, 9.3 % of the
    size) instead of zlib's level 1 (0.27 GB/s, 10.8 %); the same gzip format for any reader."""
    try:
        from isal import igzip
    except ImportError:  # the package's own dependency; zlib when a user's install lacks it
        return gzip.compress(raw, compresslevel=1, mtime=0)
    out: bytes = igzip.compress(raw, compresslevel=2)
    return out


def _private_dir(path: Path) -> None:
    """Make ``path`` (0700, its missing parents too) or accept it when it is a real folder of
    this user that no one else may write into; ArchiveError otherwise, before anything is written."""
    for folder in reversed([path, *path.parents]):
        if not folder.exists():
            folder.mkdir(mode=0o700, exist_ok=True)  # two workers' first batches may race to make it
    st = path.lstat()
    if path.is_symlink() or not path.is_dir():
        raise ArchiveError(f"archive folder {path} is not a folder: refused, nothing written")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ArchiveError(
            f"archive folder {path} belongs to another user or others may write into it (mode {st.st_mode & 0o777:o}): "
            "another local user could remove a committed batch's file; refused, nothing written"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_batch(root: Path, run_id: str, batch: int, lines: str, rows: int) -> ArchiveFile:
    """Write ``lines`` (newline-joined JSON rows) as batch ``batch`` of run ``run_id`` under
    ``root``, durably (file and folder fsynced) before returning; never overwrites a file.

    Writes one new file (and the run's folder, 0700, when missing). Raises ArchiveError or
    OSError (disk full, permissions): the caller's batch then rolls back, nothing deleted."""
    folder = root / run_id
    new_folder = not folder.exists()
    _private_dir(folder)
    name = f"{run_id}/batch-{batch:06d}-{secrets.token_hex(4)}.jsonl.gz"
    data = _compress((lines + "\n").encode() if lines else b"")
    fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(folder)
    if new_folder:
        _fsync_dir(root)
    return ArchiveFile(name, hashlib.sha256(data).hexdigest(), rows, len(data))


def read_batch(root: Path, name: str, sha256: str) -> list[str]:
    """The lines of archive file ``name`` under ``root``, after checking its bytes against
    ``sha256`` (the ledger's). Reads only. ArchiveError when the file is missing,
    unreadable, or not the one the ledger sealed."""
    path = root / name
    if ".." in Path(name).parts or Path(name).is_absolute():
        raise ArchiveError(f"archive file name {name!r} from the ledger is not a name under the archive folder")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArchiveError(
            f"archive file {path} cannot be read ({exc.strerror}): restore refused, nothing written "
            "(give archive_dir if the archive was moved)"
        ) from None
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise ArchiveError(
            f"archive file {path} has sha256 {found}, but its batch committed {sha256}: the file was changed "
            "after the fact; restore refused, nothing written"
        )
    try:
        text = gzip.decompress(data).decode()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"archive file {path} is not gzip-compressed JSON Lines ({exc}): restore refused") from None
    return [line for line in text.split("\n") if line]
