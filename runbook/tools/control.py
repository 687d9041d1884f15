"""``python -m runbook stop RUN_ID`` and ``python -m runbook status``: a running sweep or undo,
seen and stopped from any machine that reaches the database (reader or sweeper role).

Both talk to the database of ``DATABASE_URL`` / ``PG*`` (``runbook.db.connect.resolve``), not to
the kernel: the sweep may run on someone else's JupyterHub.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from typing import Any

from ..audit.record import operator
from ..db import control, ledger
from ..db.connect import connect, resolve
from ..db.transactions import read_only
from ..notebook.render import text_table

__all__ = ["add_commands", "cmd_stop", "cmd_status"]


def cmd_stop(args: argparse.Namespace) -> int:
    """Ask run ``args.run_id`` to stop, wait (up to ``args.wait`` seconds) until its ledger row
    is closed, and print how it ended. Exit 0 when it stopped, 1 when it still runs after the
    wait, 2 when the ledger has no open run of that id. Writes one ``stop_requests`` row."""
    with connect(resolve(), purpose="stop") as conn:
        asked = control.request_stop(conn, args.run_id, operator(conn))
        if asked is None:
            with read_only(conn):
                info = ledger.run_info(conn, args.run_id)
            if info is None:
                print(f"run {args.run_id}: not in the ledger of this database; nothing asked")
            else:
                print(f"run {args.run_id} ({info['kind']}) already ended: {info['stop_reason']}, "
                      f"{info['rows_changed'] or 0:,} rows changed; nothing asked")  # fmt: skip
            return 2
        print(f"run {args.run_id}: stop requested at {asked.isoformat(timespec='seconds')}; it stops at its next batch boundary")
        deadline = time.monotonic() + args.wait
        while True:
            with read_only(conn):
                info = ledger.run_info(conn, args.run_id)
                ended = ledger.run_ended(conn, args.run_id)
            if ended:
                assert info is not None
                print(f"run {args.run_id} stopped: {info['stop_reason']}, {info['rows_changed'] or 0:,} rows changed")
                return 0
            if time.monotonic() >= deadline:
                with read_only(conn):
                    live = [r for r in control.open_runs(conn) if r["run_id"] == args.run_id and r["pid"]]
                if not live:
                    print(f"run {args.run_id} is still open in the ledger but no session of it is visible: it may have been "
                          "killed (python -m runbook status; the runner closes a killed run's row when it seals it)")  # fmt: skip
                else:
                    print(f"run {args.run_id} still running after {args.wait:g} s (a batch in flight, or a health pause); "
                          "it stops at its next batch boundary")  # fmt: skip
                return 1
            time.sleep(0.2)


def _who(operator_json: Any) -> str:
    who = operator_json or {}
    parts = [who.get("os_user"), who.get("jupyterhub_user") and f"hub:{who['jupyterhub_user']}", who.get("session_user")]
    return "/".join(p for p in parts if p) or "?"


def _left(row: dict[str, Any]) -> str:
    rate = row["rows_last_minute"] / 60
    if row["candidates"] is None or rate <= 0:
        return "?"
    seconds = max(int(row["candidates"]) - int(row["rows"]), 0) / rate
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def cmd_status(args: argparse.Namespace) -> int:
    """Print the running sweeps and undos of this database: target, run id, who, since, rows
    so far, rate over the last minute, time left, the live session (or none: killed?) and
    whether a stop was asked. Reads only. Exit 0."""
    with connect(resolve(), purpose="status") as conn:
        with read_only(conn):
            runs = control.open_runs(conn)
    if not runs:
        print("no sweep or undo is running in this database")
        return 0
    now = datetime.now(timezone.utc)
    rows = [
        (r["target"], r["run_id"], r["kind"], _who(r["operator"]), r["started_at"].astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
         f"{int(r['rows']):,}" + (f" of {int(r['candidates']):,}" if r["candidates"] is not None else ""),
         f"{r['rows_last_minute'] / 60:,.0f}/s", _left(r),
         f"pid {r['pid']}" if r["pid"] else "none visible (killed? another role's?)", "yes" if r["stop_requested"] else "")
        for r in runs
    ]  # fmt: skip
    headers = ("target", "run id", "kind", "who", "since (UTC)", "rows", "rate", "left", "session", "stop asked")
    print(f"{len(runs)} open run(s) at {now:%Y-%m-%d %H:%M:%SZ}:\n" + text_table(headers, rows))
    return 0


def add_commands(sub: Any) -> None:
    """Register ``stop`` and ``status`` on the CLI's sub-parsers."""
    stop = sub.add_parser("stop", help="ask a running sweep or undo to stop at its next batch boundary, from anywhere")
    stop.add_argument("run_id")
    stop.add_argument("--wait", type=float, default=60.0, help="seconds to wait for it to stop (default 60)")
    stop.set_defaults(func=cmd_stop)
    status = sub.add_parser("status", help="the sweeps and undos running in this database")
    status.set_defaults(func=cmd_status)
