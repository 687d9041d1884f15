"""``python -m runbook lab`` and ``python -m runbook session new``: one session folder per incident.

A session folder, ``<run folder>/<UTC time>_<OS user>[_<label>]/``, holds fresh copies of the
notebooks (without outputs); JupyterLab opens it as its root, so nothing an engineer does
touches ``notebooks/``, and the executed notebooks of the incident stay together. When ``lab``
stops, every notebook in the folder is sealed (read-only, ``.sha256``, and, for a sweep or
undo run the ledger knows, its checksum in the ledger) and the folder gets ``SESSION.md``:
who, when, which database, which runs.

``lab`` works on the database of ``DATABASE_URL`` / ``PG*`` when set (credentials from the
environment or a passfile, never shown), on the embedded demo database otherwise or with
``--demo``; it says which on the terminal (host, database, role, server version, system
identifier) before JupyterLab starts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..audit.record import database_identity, operator, read_record
from ..audit.sealing import run_dir, run_of, seal
from ..db.connect import DEMO_DATABASE, Database, connect, resolve
from ..db.embedded import EmbeddedServer, default_home
from ..db.transactions import read_only
from ..errors import ParameterError
from ..notebook.cells import NOTEBOOK_DIR, NOTEBOOKS
from ..rules.states import Kind
from ..sql import history as history_sql
from .demo import demo_exists, load_demo

__all__ = ["LABEL_RULE", "new_session", "seal_session", "database_lines", "cmd_lab", "cmd_session_new", "cmd_kernel_install"]

LABEL_RULE = "1-40 letters, digits, '-', '_' or '.' (an incident id such as INC-1234)"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}\Z")
_DB_ENV = ("DATABASE_URL", "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGPASSWORD")
KERNEL_NAME = "litellm-runbook"


def new_session(label: str = "", root: Path | None = None, now: datetime | None = None) -> Path:
    """Create ``<root>/<UTC time>_<OS user>[_<label>]/`` (0700; root: the run folder) with a
    copy of every notebook, outputs cleared; return it. ParameterError for a bad label."""
    import nbformat

    if label and not _LABEL.match(label):
        raise ParameterError("label", label, LABEL_RULE)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    user = str(operator()["os_user"])
    folder = (root or run_dir()) / "_".join(p for p in (stamp, user, label) if p)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=0o700)
    for source in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        nb = nbformat.read(source, as_version=4)  # type: ignore[no-untyped-call]
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, folder / source.name)  # type: ignore[no-untyped-call]
    return folder


def database_lines(database: Database, demo: bool) -> tuple[list[str], dict[str, Any]]:
    """What the terminal says before JupyterLab starts: which database (host, database, role,
    server version, system identifier) and whether it is the demo. Reads only."""
    with connect(database, purpose="lab") as conn, read_only(conn):
        identity = database_identity(conn)
    kind = "the embedded DEMO database" if demo else "NOT the demo: a real database"
    lines = [
        f"database: {database.describe()}",
        f"  {kind}; database {identity['database']} as role {identity['user']}, PostgreSQL {identity['server_version']}, "
        f"system identifier {identity['system_identifier'] or 'unknown (not visible to this role)'}",
    ]
    return lines, identity


def _ledger_runs(database: Database, since: datetime) -> list[tuple[Any, ...]]:
    """The runs the ledger holds that started since ``since``, oldest first: run_id, kind,
    target, rows changed, stop reason; [] without a ledger or a connection. Reads only."""
    from ..sql import ledger as ledger_sql

    try:
        with connect(database, purpose="lab/session") as conn, read_only(conn):
            present = conn.execute(ledger_sql.ledger_present()).fetchone()
            if not (present and present[0]):
                return []
            days = max((datetime.now(timezone.utc) - since).total_seconds() / 86400, 0.0) + 1 / 86400
            rows = conn.execute(history_sql.runs_since(), {"days": days, "rule": "", "default_rule": "stale_responses"}).fetchall()
    except Exception:  # noqa: BLE001 - SESSION.md is written whatever the database's state
        return []
    return sorted(((r[0], r[1], r[3], r[8], r[9], r[5]) for r in rows), key=lambda r: r[5])


def seal_session(folder: Path, database: Database | None, started: datetime, lines: list[str]) -> Path:
    """Seal every notebook in ``folder`` (read-only, ``.sha256``, a sweep's or undo's checksum
    in the ledger) and write ``SESSION.md``: who, when, which database, which runs (from the
    ledger: those started during the session), which notebooks with their sha256. Returns
    SESSION.md's path. Writes those files only."""
    sealed = []
    stems = sorted(NOTEBOOKS.values(), key=len, reverse=True)
    for path in sorted(folder.glob("*.ipynb")):
        kept = _sealed_copy(path, stems)
        if kept is not None:  # a live action's copy, sealed (and ledgered) under its run when it ended
            sealed.append((path.name, *kept))
            continue
        record = read_record(path)
        if record is not None and record.get("run_id"):
            digest = seal(path, kind=str(record.get("notebook") or ""), run_id=str(record["run_id"]), error=None,
                          ended="succeeded", database=database if record.get("notebook") in (Kind.SWEEP, Kind.UNDO) else None)  # fmt: skip
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            (folder / (path.name + ".sha256")).write_text(f"{digest}  {path.name}\n")
            path.chmod(0o444)
        sealed.append((path.name, digest, (record or {}).get("run_id")))
    who = operator()
    ended = datetime.now(timezone.utc)
    runs = _ledger_runs(database, started) if database is not None else []
    text = [
        f"# Session {folder.name}",
        "",
        f"- who: OS user {who['os_user']}" + (f", JupyterHub user {who['jupyterhub_user']}" if who.get("jupyterhub_user") else "")
        + f", on {who['host']}",
        f"- when: {started:%Y-%m-%d %H:%M:%S}Z to {ended:%Y-%m-%d %H:%M:%S}Z",
        *[f"- {line.strip()}" for line in lines],
        "",
        "## Runs (the ledger's, in order)",
        "",
        "| run id | kind | target | rows changed | stop reason |",
        "|---|---|---|---|---|",
        *[f"| {r[0]} | {r[1]} | {r[2]} | {r[3] if r[3] is not None else ''} | {r[4] or 'running'} |" for r in runs],
        "",
        "## Notebooks (sealed: read-only, sha256 beside each)",
        "",
        *[f"- {name}: sha256 {digest}" + (f", run {rid}" if rid else ", never run to its record") for name, digest, rid in sealed],
        "",
    ]
    out = folder / "SESSION.md"
    out.write_text("\n".join(text))
    return out


def _sealed_copy(path: Path, stems: list[str]) -> tuple[str, str | None] | None:
    """(sha256, run id) of a notebook already sealed under its run (an ``executed_name``,
    read-only, matching its ``.sha256``: a live action's copy, or a headless run's); None for
    anything else, which is sealed as the session ends. Its run id is its name's, not its
    record's: a live action's copy is the notebook as saved, whose own record is a dry run's."""
    run_id, beside = run_of(path.name, stems), path.with_name(path.name + ".sha256")
    if run_id is None or path.stat().st_mode & 0o222 or not beside.exists():
        return None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return (digest, run_id) if beside.read_text().split()[:1] == [digest] else None


def _uses_demo(args: argparse.Namespace) -> bool:
    return bool(args.demo) or not any(os.environ.get(name) for name in _DB_ENV)


AUTOSAVE_S = 5  # JupyterLab's own default is 120 s: outputs on screen but unsaved are not sealed
_DOCMANAGER = "@jupyterlab/docmanager-extension:plugin"


def app_settings(folder: Path) -> Path:
    """Fill ``folder`` as JupyterLab's application settings folder: what this Python's
    JupyterLab has there already (``overrides.json``, ``page_config.json``), with autosave
    every ``AUTOSAVE_S`` seconds as the default (a user's own setting still wins), so that
    a session sealed at Ctrl-C holds what the engineer saw. Returns ``folder``."""
    from jupyterlab.commands import get_app_dir  # type: ignore[import-untyped]

    system = Path(get_app_dir()) / "settings"
    for name in ("overrides.json", "page_config.json"):
        if (system / name).is_file():
            shutil.copyfile(system / name, folder / name)
    overrides_path = folder / "overrides.json"
    overrides = json.loads(overrides_path.read_text()) if overrides_path.exists() else {}
    overrides[_DOCMANAGER] = {**overrides.get(_DOCMANAGER, {}), "autosave": True, "autosaveInterval": AUTOSAVE_S}
    overrides_path.write_text(json.dumps(overrides, indent=1))
    return folder


_STOP_WAIT_S = 60.0  # JupyterLab's own shutdown of its kernels, before it is killed


def cmd_lab(args: argparse.Namespace) -> int:
    """JupyterLab on a new session folder, on the demo or the configured database; on Ctrl-C
    the folder's notebooks are sealed and SESSION.md written. Exit status: JupyterLab's."""
    # Ctrl-C, or SIGTERM from whatever supervises lab, stops it and seals the session, also
    # when lab was started with SIGINT ignored (as a shell starts its background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo = _uses_demo(args)
    env = {k: v for k, v in os.environ.items()}
    if demo:
        server = EmbeddedServer(default_home())
        server.start()
        if not demo_exists(server):
            load_demo(server, args.rows)
        env = {k: v for k, v in env.items() if k not in _DB_ENV}
        env["DATABASE_URL"] = server.dsn(DEMO_DATABASE)
    database = resolve(env)
    lines, _ = database_lines(database, demo)
    # Everything slow comes before the session folder exists: from its creation on, a
    # Ctrl-C at any moment ends in a sealed folder.
    settings = app_settings(Path(tempfile.mkdtemp(prefix="runbook-lab-settings-")))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={args.port}",
           f"--LabApp.app_settings_dir={settings}"]  # fmt: skip
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    lab: subprocess.Popen[bytes] | None = None
    code = 0
    for line in lines:
        print(line, flush=True)
    started = datetime.now(timezone.utc)
    # A Ctrl-C while the folder is being filled is held until the try below can seal it.
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda *_: held.append(1))
    try:
        folder = new_session(args.label)
        print(f"session folder {folder} (JupyterLab's root); Ctrl-C seals it and writes SESSION.md", flush=True)
    except BaseException:
        signal.signal(signal.SIGINT, previous)
        raise
    try:
        signal.signal(signal.SIGINT, previous)
        if held:
            raise KeyboardInterrupt
        env["RUNBOOK_RUN_DIR"] = str(folder)  # headless runs from its terminal land in the session too
        env["RUNBOOK_SESSION"] = "demo" if demo else "real"
        # Ctrl-C is lab's to handle: JupyterLab is stopped with SIGTERM, which shuts its kernels
        # down before it exits, and only then is the session sealed. Without a terminal a SIGINT
        # to the process group would also reach JupyterLab, which then exits at once and leaves
        # its kernels (a panel's sweep among them) running while the session is sealed. So it
        # starts with SIGINT ignored (with a terminal it installs its own handler anyway; its
        # kernels handle SIGINT themselves).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            lab = subprocess.Popen([*cmd, f"--notebook-dir={folder}"], env=env)
        finally:
            signal.signal(signal.SIGINT, previous)
        code = lab.wait()
    except KeyboardInterrupt:
        # A second Ctrl-C here would leave the session unsealed: from now on it is ignored.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"stopping JupyterLab (killed after {_STOP_WAIT_S:.0f} s), then sealing the session; Ctrl-C is ignored now")
        if lab is not None:
            lab.terminate()
            try:
                code = lab.wait(timeout=_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                lab.kill()
                code = lab.wait()
    shutil.rmtree(settings, ignore_errors=True)
    summary = seal_session(folder, database, started, lines)
    print(f"sealed the session: {summary}")
    return code if code > 0 else 0


def cmd_session_new(args: argparse.Namespace) -> int:
    """Create a session folder for a hub user's own JupyterLab; print its path."""
    print(new_session(args.label))
    return 0


def cmd_session_seal(args: argparse.Namespace) -> int:
    """Seal a session folder (its notebooks, SESSION.md) when it was used without ``lab``."""
    database = None if args.no_ledger else resolve()
    started = datetime.fromtimestamp(Path(args.folder).stat().st_mtime, timezone.utc)
    lines = database_lines(database, False)[0] if database is not None else []
    print(seal_session(Path(args.folder), database, started, lines))
    return 0


def cmd_kernel_install(args: argparse.Namespace) -> int:
    """Install the ``litellm-runbook`` kernel spec: the notebooks run with this package's Python."""
    from ipykernel.kernelspec import install

    where = install(kernel_name=KERNEL_NAME, display_name="LiteLLM runbook", user=args.user,
                    prefix=None if args.user else sys.prefix)  # fmt: skip
    print(f"kernel {KERNEL_NAME} installed in {where} (python: {sys.executable})")
    return 0
