"""``python -m runbook``: the embedded database, the demo, JupyterLab, and headless runs.

    python -m runbook demo [--rows N]        embedded DB + demo data + the three notebooks
    python -m runbook lab [--demo] [--label L]  JupyterLab in a new session folder, on DATABASE_URL or the demo
    python -m runbook session new|seal       a session folder for an existing JupyterHub; seal one
    python -m runbook kernel install [--user] the litellm-runbook kernel spec
    python -m runbook run NAME [-p KEY VALUE ...] [-r KEY VALUE ...]
                                             one notebook headless, into the run folder
    python -m runbook verify [PATH ...]      every sealed file of the run folder (or PATHs) against the
                                             ledger's seals: match, edited, missing, unknown
    python -m runbook export RUN_ID [--out FILE] [--force]
                                             a run's verified notebook as one self-contained HTML page
    python -m runbook notebooks [--write]    parameters cells and README table vs runbook/rules/params.py
    python -m runbook targets                what the runbook can clean, and how LiteLLM itself does
    python -m runbook stop RUN_ID [--wait S] ask a running sweep or undo to stop, from any machine
    python -m runbook status                 the sweeps and undos running in this database
    python -m runbook db start|stop|status|url|destroy
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path
from typing import Any

from .. import logs
from ..db.connect import DEMO_DATABASE
from ..db.embedded import EmbeddedServer, default_home
from ..errors import RunbookError
from ..notebook.cells import NOTEBOOK_DIR
from ..rules.states import Kind
from . import lab as lab_commands
from .demo import load_demo
from .control import add_commands

# Variables that would point a child process at another database than the demo one.
_DB_ENV = ("DATABASE_URL", "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGPASSWORD")


def _demo_env(server: EmbeddedServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DB_ENV}
    env["DATABASE_URL"] = server.dsn(DEMO_DATABASE)
    return env


def _parse_value(raw: str) -> Any:
    # papermill's -p conversion: Python literals (True, 7, 0.5, None) become values.
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def cmd_db(args: argparse.Namespace) -> int:
    server = EmbeddedServer(default_home())
    if args.action == "start":
        server.start()
        print(f"embedded PostgreSQL running: {server.dsn(DEMO_DATABASE)} (data in {server.home})")
    elif args.action == "stop":
        server.stop()
        print("embedded PostgreSQL stopped")
    elif args.action == "status":
        running = server.running()
        print(f"embedded PostgreSQL in {server.home}: {f'running, socket in {server.socket_dir}' if running else 'stopped'}")
        return 0 if running else 3
    elif args.action == "url":
        server.start()
        print(server.dsn(DEMO_DATABASE))
    elif args.action == "destroy":
        server.destroy()
        print(f"embedded PostgreSQL stopped and {server.home} deleted")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .runner import execute

    server = EmbeddedServer(default_home())
    server.start()
    print(f"embedded PostgreSQL running in {server.home}")
    load_demo(server, args.rows)
    env = _demo_env(server)
    from ..db.connect import Database
    from .demo import what_targets_would_do

    print("what each target would do (python -m runbook run sweep -p target NAME; dry runs):")
    for line in what_targets_would_do(Database(env["DATABASE_URL"], "demo")):
        print(f"  {line}")
    plan: list[tuple[Kind, dict[str, Any]]] = [
        (Kind.INSPECT, {"batch_size": args.batch_size}),
        (Kind.PREVIEW, {"batch_size": args.batch_size}),
        # The demo database is disposable, so the demo sweeps for real; elsewhere dry_run defaults to True.
        (Kind.SWEEP, {"batch_size": args.batch_size, "dry_run": False}),
    ]
    failed = False
    for name, params in plan:
        done = execute(name, params, Path(args.run_dir) if args.run_dir else None, env=env)
        outcome = (done.record or {}).get("outcome", {})
        summary = ""
        if name is Kind.INSPECT and name in outcome:
            summary = f"{outcome[name]['candidates']:,} candidates"
        elif name is Kind.PREVIEW and name in outcome:
            summary = f"next batch of {len(outcome[name]['ids']):,} rows, fingerprint {outcome[name]['fingerprint']}"
        elif name is Kind.SWEEP and name in outcome:
            s = outcome[name]
            summary = f"{s['changed']:,} rows marked stale_expired in {len(s['batches'])} batches, stopped: {s['stop_reason']}"
        status = "ok" if done.ok else f"FAILED ({done.error})"
        print(f"{name:8s} {status:6s} {summary}\n         {done.path}")
        failed = failed or not done.ok
    print(f"\nExecuted notebooks (read-only, with .sha256): {done.path.parent}\nOpen them interactively: make lab")
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import execute

    params: dict[str, Any] = {k: _parse_value(v) for k, v in args.p}
    params.update({k: v for k, v in args.r})
    done = execute(args.name, params, Path(args.run_dir) if args.run_dir else None)
    print(done.path)
    if not done.ok:
        print(f"run failed: {done.error}", file=sys.stderr)
        return 1
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..audit.sealing import run_dir
    from ..audit.verify import State, verify_folder, verify_paths
    from ..db.connect import resolve

    if args.paths:
        found = verify_paths([Path(p) for p in args.paths], resolve())
    else:
        folder = Path(args.run_dir) if args.run_dir else run_dir()
        print(f"run folder {folder}")
        found = verify_folder(folder, resolve())
    for verdict in found:
        print(verdict.line())
    counts = ", ".join(f"{sum(v.state == s for v in found)} {s}" for s in State)
    failed = sum(v.failed for v in found)
    print(f"{len(found)} files: {counts}; {failed} failed" + ("" if found else " (nothing sealed here or in the ledger)"))
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..audit.export import export_run
    from ..db.connect import Database, resolve

    database: Database | None = None
    try:
        database = resolve()
    except RunbookError:
        if not args.force:
            raise
    done = export_run(
        args.run_id, database, folder=Path(args.run_dir) if args.run_dir else None, out=Path(args.out) if args.out else None,
        force=args.force,
    )  # fmt: skip
    state = done.verdict.line() if done.verdict else f"{done.notebook}: NOT VERIFIED"
    print(f"{state}\nwrote {done.html}")
    for other in done.others:
        print(f"also of run {args.run_id}, not exported: {other}")
    return 0


def cmd_notebooks(args: argparse.Namespace) -> int:
    from ..notebook.cells import stale_cells, write_cells

    if args.write:
        print("\n".join(f"rewrote the generated parameters of {name}" for name in write_cells()) or "nothing to change")
        return 0
    stale = stale_cells()
    print("\n".join(f"{name}: its generated parameters differ from runbook/rules/params.py" for name in stale) or "up to date")
    return 1 if stale else 0


def cmd_targets(args: argparse.Namespace) -> int:
    from ..rules.targets import CATALOGUE
    from ..sql.index import index_name

    for entry in CATALOGUE.values():
        t = entry.target
        print(f"{entry.name}\n  table    {t.schema}.{t.table}\n  rule     {entry.rule}\n  action   {entry.action}")
        print(f"  LiteLLM  {entry.litellm}\n  index    {entry.index} ({index_name(t)})")
    return 0


def cmd_grants(args: argparse.Namespace) -> int:
    from ..rules.targets import target_named
    from ..sql.grants import grants_sql, owner_setup_sql

    target = target_named(args.target, args.schema)  # a bad name stops here, before anything is printed
    print(f"-- 1. as the database owner: the ledger schema, owned by {args.ledger_owner}")
    for stmt in owner_setup_sql(args.database, args.ledger_owner):
        print(stmt.as_string(None) + ";")
    print(f"-- 2. as {args.ledger_owner}: python -m runbook ledger init")
    print("-- 3. as the owner of the LiteLLM table and of the ledger (or a superuser):")
    for stmt in grants_sql(target, args.database, args.reader, args.sweeper):
        print(stmt.as_string(None) + ";")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    from ..db import ledger
    from ..db.connect import connect

    with connect(purpose="ledger-init") as conn:
        ledger.ensure(conn)
        print(f"ledger ready: schema {ledger.SCHEMA} in {conn.info.dbname}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runbook", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    db = sub.add_parser("db", help="manage the embedded PostgreSQL")
    db.add_argument("action", choices=["start", "stop", "status", "url", "destroy"])
    db.set_defaults(func=cmd_db)
    demo = sub.add_parser("demo", help="load demo data and run the three notebooks headless")
    demo.add_argument("--rows", type=int, default=20_000)
    demo.add_argument("--batch-size", type=int, default=1000)
    demo.add_argument("--run-dir", default=None)
    demo.set_defaults(func=cmd_demo)
    lab = sub.add_parser("lab", help="JupyterLab in a new session folder, on DATABASE_URL / PG* if set, else the demo database")
    lab.add_argument("--port", type=int, default=8888)
    lab.add_argument("--rows", type=int, default=20_000)
    lab.add_argument("--demo", action="store_true", help="the embedded demo database even when DATABASE_URL or PG* is set")
    lab.add_argument("--label", default="", help="added to the session folder's name, e.g. INC-1234")
    lab.set_defaults(func=lab_commands.cmd_lab)
    session = sub.add_parser("session", help="session folders for JupyterLab (a hub user's own)")
    session_sub = session.add_subparsers(dest="action", required=True)
    new = session_sub.add_parser("new", help="create a session folder with fresh copies of the notebooks; print its path")
    new.add_argument("--label", default="")
    new.set_defaults(func=lab_commands.cmd_session_new)
    sealing = session_sub.add_parser("seal", help="seal a session folder's notebooks and write its SESSION.md")
    sealing.add_argument("folder")
    sealing.add_argument("--no-ledger", action="store_true", help="do not connect to the database")
    sealing.set_defaults(func=lab_commands.cmd_session_seal)
    kernel = sub.add_parser("kernel", help="the litellm-runbook kernel spec, for an existing JupyterHub")
    kernel_sub = kernel.add_subparsers(dest="action", required=True)
    install = kernel_sub.add_parser("install", help="install it (system-wide in this environment, or --user)")
    install.add_argument("--user", action="store_true")
    install.set_defaults(func=lab_commands.cmd_kernel_install)
    run = sub.add_parser("run", help="execute one notebook headless into the run folder")
    run.add_argument("name", choices=[str(kind) for kind in Kind])
    run.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="parameter (Python literal)")
    run.add_argument("-r", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="parameter kept as a raw string")
    run.add_argument("--run-dir", default=None)
    run.set_defaults(func=cmd_run)
    ver = sub.add_parser("verify", help="check the run folder's sealed files (or PATHs) against the ledger's seals; exit 1 on any edited, missing or unexpected unknown file")
    ver.add_argument("paths", nargs="*", help="files to check (default: the whole run folder, and every file the ledger seals)")
    ver.add_argument("--run-dir", default=None)
    ver.set_defaults(func=cmd_verify)
    exp = sub.add_parser("export", help="a run's executed notebook, verified, as one self-contained HTML page")
    exp.add_argument("run_id")
    exp.add_argument("--out", default=None, help="the HTML file (default: <run folder>/<notebook's name>.html)")
    exp.add_argument("--force", action="store_true", help="export a notebook that fails verification, or cannot be verified, marked so")
    exp.add_argument("--run-dir", default=None)
    exp.set_defaults(func=cmd_export)
    nbs = sub.add_parser("notebooks", help="check (or --write) the notebooks' parameters cells and the README's parameters table against runbook/rules/params.py")
    nbs.add_argument("--write", action="store_true")
    nbs.set_defaults(func=cmd_notebooks)
    grants = sub.add_parser("grants", help="print the least-privilege grants for the three roles")
    grants.add_argument("--database", default="litellm")
    grants.add_argument("--reader", default="litellm_runbook_reader")
    grants.add_argument("--sweeper", default="litellm_runbook_sweeper")
    grants.add_argument("--ledger-owner", default="litellm_runbook_owner")
    grants.add_argument("--schema", default="public", help="the schema of LiteLLM's tables (DATABASE_URL's ?schema=)")
    grants.add_argument("--target", default="stale_responses", help="the target the roles work on (python -m runbook targets)")
    grants.set_defaults(func=cmd_grants)
    targets = sub.add_parser("targets", help="list the targets: table, rule, action, LiteLLM's own job, index")
    targets.set_defaults(func=cmd_targets)
    led = sub.add_parser("ledger", help="create the ledger schema and tables (as the ledger owner)")
    led.add_argument("action", choices=["init"])
    led.set_defaults(func=cmd_ledger)
    add_commands(sub)  # stop, status (runbook.tools.control)
    args = parser.parse_args(argv)
    logs.show_on_stdout()  # the library's progress lines and warnings, on the command line
    try:
        return int(args.func(args))
    except RunbookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

