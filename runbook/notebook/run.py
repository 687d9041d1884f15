"""What the notebooks call: one ``Run`` per executed notebook, a few lines per cell.

``start()`` validates every parameter before it touches the database, connects with
credentials from the environment only, and shows where it is connected. Each step
(``inspect``, ``preview``, ``sweep``) renders its report and returns it; ``finish()``
emits the machine-readable record. A step that fails emits the record with
``outcome: failed`` and the error before re-raising, so a failed run's notebook still
says what happened.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .. import logs
from ..audit.record import check_run_id, database_identity, run_record
from ..db.connect import Database, connect, resolve
from ..db.ledger import recent_runs
from ..db.transactions import Conn
from ..errors import ParameterError
from ..audit.sealing import run_dir, seal_notebook_copy, seal_record_file
from ..ops.history import HistoryReport, history
from ..ops.index import IndexResult, create_index
from ..ops.inspection import InspectReport, inspect
from ..ops.live import utc_now
from ..ops.preview import PreviewReport, preview
from ..ops.sweep import SweepResult, sweep
from ..ops.undo import UndoResult, target_of_run, undo
from ..rules.params import Options, check_parameters
from ..rules.states import Kind, Status, StopReason
from ..rules.target import DEFAULT_TARGET, Target
from ..rules.targets import target_named
from . import render
from .cells import OWN_ID
from .charts import show_history_chart, show_inspect_charts, show_sweep_chart
from .history import history_report
from .progress import progress_reporter

__all__ = ["Run", "start", "interactive", "NOTEBOOK_NAMES"]

log = logs.get(__name__)


def interactive() -> bool:
    """True in a JupyterLab kernel; False under papermill, nbval or plain Python.

    JupyterLab sets JPY_SESSION_NAME in its kernels' environment, and a command started
    from one (``!python -m runbook run ...``) inherits it: the runner removes it from the
    kernels it starts, so a command-line run is never taken for an interactive one."""
    return bool(os.environ.get("JPY_SESSION_NAME"))


def _failed(stop_reason: str) -> bool:
    return bool(stop_reason) and StopReason(stop_reason).failed


@dataclass
class Run:
    """One executed notebook: its id, validated options, connection and outcome."""

    kind: Kind
    run_id: str
    opts: Options
    target: Target
    database: Database
    conn: Conn
    started_at: str
    params: dict[str, Any]
    outcome: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    of_run_id: str = ""
    demo: bool = True  # the embedded demo database; anything else asks for its name before a panel's Execute

    @contextmanager
    def _step(self, name: Kind) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            self.outcome.update({"status": Status.FAILED, "step": name, "error": f"{type(exc).__name__}: {exc}"})
            self.finish()
            raise

    def controls(self) -> Any:
        """In JupyterLab, the sweep's control panel (settings, Preview, confirm, Execute).

        Headless (papermill, nbval) it builds nothing and returns None, so no cell waits.
        """
        if not interactive():
            return None
        from .panel import sweep_panel

        return sweep_panel(self)

    def create_index(self) -> IndexResult:
        """Show, or with dry_run=False build, the partial index inspect suggests."""
        with self._step(Kind.INDEX):
            result = create_index(self.conn, self.target, dry_run=self.opts.dry_run)
        render.display(render.index_result(result))
        self.outcome[Kind.INDEX] = result.to_dict()
        if interactive() and result.created:
            self._seal_now(Kind.INDEX, self.run_id)
        return result

    def inspect(self) -> InspectReport:
        """Run inspect and render it. Reads only."""
        with self._step(Kind.INSPECT):
            report = inspect(self.conn, self.target, self.opts)
        render.show_inspect(report)
        show_inspect_charts(report)
        self.outcome[Kind.INSPECT] = report.to_dict()
        return report

    def preview(self) -> PreviewReport:
        """Show the next batch and the SQL the sweep will run. Reads only."""
        with self._step(Kind.PREVIEW):
            report = preview(self.conn, self.target, self.opts)
        render.show_preview(report)
        self.outcome[Kind.PREVIEW] = report.to_dict()
        return report

    def sweep(self) -> SweepResult:
        """Run the sweep (a dry run unless dry_run=False), reporting progress per batch.

        In JupyterLab a live sweep runs only from the control panel's Execute button, after
        a preview and a confirmation: this cell refuses dry_run=False (ParameterError).
        """
        opts = self.opts
        with self._step(Kind.SWEEP):
            if interactive() and not opts.dry_run:
                # Refused, not turned into a dry run: a command started from a JupyterLab
                # cell or terminal (plain papermill inherits JPY_SESSION_NAME) must fail
                # loudly rather than exit 0 having written nothing.
                raise ParameterError(
                    "dry_run", False,
                    "True in a JupyterLab cell: the live sweep runs from the panel's Execute button (after Preview and "
                    "confirm), or headless with python -m runbook run sweep -p dry_run False",
                )  # fmt: skip
            result = sweep(
                self.conn, self.target, opts, run_id=self.run_id, parameters=self.params,
                on_batch=progress_reporter(interactive()),
            )  # fmt: skip
        render.show_sweep(result)
        show_sweep_chart(result)
        self.outcome[Kind.SWEEP] = result.to_dict()
        if _failed(result.stop_reason):
            self.outcome["status"] = Status.FAILED
        return result

    def undo(self) -> UndoResult | None:
        """Restore what run ``of_run_id`` changed (a dry run unless dry_run=False).

        Without a run id it changes nothing and lists the recent sweep runs to choose from.
        """
        if not self.of_run_id:
            with self._step(Kind.UNDO):
                runs = recent_runs(self.conn)
            render.display(render.recent_runs(runs))
            self.outcome[Kind.UNDO] = {"status": Status.NOTHING_TO_DO, "recent_runs": [r["run_id"] for r in runs]}
            return None
        with self._step(Kind.UNDO):
            result = undo(self.conn, self.target, self.opts, of_run_id=self.of_run_id, run_id=self.run_id, parameters=self.params)
        render.show_undo(result)
        self.outcome[Kind.UNDO] = result.to_dict()
        if _failed(result.stop_reason):
            self.outcome["status"] = Status.FAILED
        if interactive() and not self.opts.dry_run:
            self._seal_now(Kind.UNDO, self.run_id)
        return result

    def _seal_now(self, kind: Kind, run_id: str) -> None:
        """In JupyterLab, right after a live action: the record as it stands now as a sealed
        JSON file, and a sealed copy of the notebook as saved, in the run folder (the session
        folder under ``python -m runbook lab``), their checksums in the ledger. A closed tab or
        a dead kernel then loses nothing of what was done. Never raises: the action is done."""
        try:
            record = {**self.record(), "source": "cell", "outcome": {**self.outcome, "status": self.outcome.get("status", Status.SUCCEEDED)}}
            seal_record_file(run_dir(), kind=kind, run_id=run_id, record=record, conn=self.conn)
            seal_notebook_copy(run_dir(), run_id=run_id, conn=self.conn)
        except Exception as exc:  # noqa: BLE001 - the undo stands; say why its copy is missing
            log.warning(f"the sealed copy of this notebook could not be written: {type(exc).__name__}: {exc}")

    def history(self) -> HistoryReport:
        """The ledger's runs of the last ``days`` days (of ``target``, or all), their executed
        notebooks checked against their seals, the backlog over time and, with ``run_id``, that
        run in detail. Reads only."""
        with self._step(Kind.HISTORY):
            report = history(
                self.conn, run_dir(), target=str(self.params.get("target") or ""),
                days=float(self.params.get("days", 30.0)), run_id=self.of_run_id,
            )  # fmt: skip
        render.display(history_report(report))
        show_history_chart(report)
        self.outcome[Kind.HISTORY] = report.to_dict()
        return report

    def finish(self) -> dict[str, Any]:
        """Emit the run record as one machine-readable output and return it.

        Headless (papermill), also closes the run's connection: nothing runs after the
        record. In JupyterLab it stays open for the control panel.
        """
        self.outcome.setdefault("status", Status.SUCCEEDED)
        record = self.record()
        render.show_record(record)
        if not interactive():
            # Measured: a connection left open at kernel exit held papermill's kernel
            # shutdown ~2.6 s in 2 of 16 runs; closed first, 0 of 14.
            self.conn.close()
        return record

    def record(self) -> dict[str, Any]:
        """The run record as it stands now (``finish`` emits it): ``audit.record.run_record``.
        Reads nothing from the database."""
        return run_record(
            run_id=self.run_id, kind=self.kind, started_at=self.started_at, finished_at=utc_now("seconds"),
            database_source=self.database.source, identity=self.identity, parameters=self.params, opts=self.opts,
            target=self.target, outcome=self.outcome,
        )  # fmt: skip


# Names the notebooks themselves assign after start() (JupyterLab may run start() again
# later): skipped only while they hold what the notebook put there, so `-p batch 500`
# is still an unknown parameter.
NOTEBOOK_NAMES = frozenset({"run", "report", "batch", "result", "record"})
# IPython's own history names: _, __, ___, _i, _ii, _iii, _i<n>, _<n>, _ih, _oh, _dh.
_IPYTHON_NAME = re.compile(r"_{1,3}|_i{1,3}|_i?\d+|_ih|_oh|_dh")


def _given(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The variables of a notebook's namespace that are parameters, declared or not:
    everything but IPython's own names, modules (``rb``), dunder names, and the
    notebook's own results (NOTEBOOK_NAMES holding a runbook object)."""
    hidden: set[str] = set()
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and namespace is shell.user_ns:
            hidden = set(shell.user_ns_hidden)
    except ImportError:
        pass
    ours = (Run, InspectReport, PreviewReport, SweepResult, UndoResult, IndexResult, HistoryReport, dict, type(None))
    return {
        name: value
        for name, value in namespace.items()
        if name not in hidden and not _IPYTHON_NAME.fullmatch(name)
        and not (name.startswith("__") and name.endswith("__"))
        and not isinstance(value, types.ModuleType)
        and not (name in NOTEBOOK_NAMES and isinstance(value, ours))
    }  # fmt: skip


def _is_demo(database: Database) -> bool:
    """Whether the kernel works on the embedded demo database: ``python -m runbook lab`` says
    so in the kernel's environment; otherwise, the database resolved to the embedded server."""
    session = os.environ.get("RUNBOOK_SESSION")
    if session in ("demo", "real"):
        return session == "demo"
    return database.source == "embedded"


def _target(kind: Kind, conn: Conn, name: str, schema: str, of_run_id: str) -> Target:
    """The notebook's target: the ``target`` parameter; for an undo left at the default one,
    the target the undone run swept (the ledger's), so that undo needs only the run id."""
    target = target_named(name, schema)
    return target_of_run(conn, of_run_id, target) if kind == Kind.UNDO and of_run_id else target


def start(kind_name: str, namespace: Mapping[str, Any] | None = None, /, **params: Any) -> Run:
    """Validate parameters, connect, and show where. Nothing is read before validation.

    A notebook calls ``start(kind, globals())``: its parameters are the variables its
    ``parameters`` cell (and papermill's injected cell) defined; any variable that is not a
    declared parameter of that notebook (``runbook.rules.params.PARAMETERS``), a mistyped
    ``-p max_batch 1`` say, stops the run here, before any query. Keyword ``params`` are
    the same parameters given directly. ``run_id`` names this run; for ``undo``,
    ``run_id`` is the sweep run to undo and ``undo_run_id`` names the undo.
    Raises ParameterError (unknown, bad or secret-bearing parameter), DatabaseConfigError.
    """
    logs.show_on_stdout()
    given = {**(_given(namespace) if namespace is not None else {}), **params}
    opts, ids = check_parameters(kind_name, given)
    kind = Kind(kind_name)
    own = OWN_ID.get(kind, "run_id")
    of_run_id = ids["run_id"] if own != "run_id" else ""  # undo: the run to undo; history: the run to show
    rid = check_run_id(ids[own])
    database = resolve()
    conn = connect(database, purpose=f"{kind}/{rid}")
    run = Run(
        kind=kind,
        run_id=rid,
        opts=opts,
        target=_target(kind, conn, ids["target"] or DEFAULT_TARGET, database.schema, of_run_id),
        database=database,
        conn=conn,
        started_at=utc_now("seconds"),
        params={**given, own: rid},
        of_run_id=of_run_id,
    )
    run.identity = database_identity(conn)
    mode = f"fixed cutoff {opts.cutoff.isoformat()} UTC" if opts.cutoff else f"older than {opts.stale_after_days:g} days"
    demo = run.demo = _is_demo(database)
    lines = [
        f"run {rid} · {kind} · database {database.describe()} · PostgreSQL {run.identity['server_version']}",
        f"target {'' if run.target.name == DEFAULT_TARGET else run.target.name + ' on '}{run.target.schema}.{run.target.table}: "
        f"{run.target.subject} {mode}, {run.target.verb}{'' if run.target.marks else ' (archived first)'}, "
        f"batch size {opts.batch_size:,}",
    ]
    writes = kind in (Kind.SWEEP, Kind.UNDO, Kind.INDEX)
    if kind == Kind.UNDO:
        lines[1] = f"undo of run {of_run_id or '(none given)'} on {run.target.schema}.{run.target.table}, batch size {opts.batch_size:,}"
    if kind == Kind.HISTORY:
        lines[1] = f"history of {ids['target'] or 'every target'} over the last {float(ids['days']):g} days" + (
            f", run {of_run_id} in detail" if of_run_id else "")
    if writes:
        live = "LIVE: rows will be updated" if run.target.marks else f"LIVE: rows will be {run.target.verb}"
        if kind == Kind.UNDO and not run.target.marks:
            live = "LIVE: the run's archived rows will be put back (" + (
                "re-inserted" if run.target.action == "delete" else "their payloads restored") + ")"
        if kind == Kind.SWEEP and not run.target.marks:
            live += f", each archived first under {opts.archive_dir or 'archive/'}" if opts.archive else ", WITHOUT an archive"
        lines.append("DRY RUN: nothing will be written" if opts.dry_run else live)
    lines.append(
        f"connected to database {run.identity['database']} as role {run.identity['user']}, system identifier "
        f"{run.identity['system_identifier'] or 'not visible to this role'}: "
        + ("the embedded DEMO database" if demo else "NOT the demo database")
    )
    shown = render.started(lines, live=writes and not opts.dry_run, real_database=not demo)
    render.display(shown)
    log.info(shown.plain)
    return run

