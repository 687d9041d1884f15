"""The interactive control panel of the sweep notebook (ipywidgets), for JupyterLab only.

Settings (stale_after_days or a fixed cutoff, batch size, max batches, max seconds: each
a declared parameter of the sweep notebook, its label, tooltip, bounds and default read
from ``rules.params.PARAMETERS``), a Preview button that shows the next batch, a box where the engineer types the candidate
count, an Execute button that stays disabled until a preview of the *current* settings
was shown and confirmed, and a Stop button. Execute sweeps with the preview's cutoff and
fingerprint, so the first batch is exactly the previewed rows or nothing is written.
Each Execute is a run of its own in the ledger (a new run id, its own parameters, with
the notebook's run id as ``notebook_run_id``), never a resume of an earlier one.

Nothing here waits: every action runs from a button callback, and ``Run.controls()``
(a ``PanelRun``; this module never imports ``run``) calls ``sweep_panel`` only in JupyterLab, so papermill and nbval never build it. The
panel calls the same ``runbook.ops.preview`` and ``runbook.ops.sweep`` as the headless cells.

Threads. JupyterLab 4.4+ with ipykernel 7 sends widget messages to a kernel *subshell*
by default (setting "Kernel Comms over subshells"), so callbacks may run in another
thread than the cells, at the same time. The panel therefore opens its own connection
for each action instead of sharing ``run.conn`` with the cells, and runs the sweep in a
background thread: the callback returns at once, so the Stop button's click is handled
while the sweep runs (with comms on one subshell, a click would otherwise wait for the
sweep), and a kernel interrupt, which only reaches the main thread, is not needed.
"""

from __future__ import annotations

import html
import threading
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ..audit.record import new_run_id
from ..audit.sealing import run_dir, seal_notebook_copy, seal_record_file
from ..db.connect import Database, connect
from ..db.transactions import Conn
from ..errors import ParameterError
from ..ops.preview import PreviewReport, preview
from ..ops.sweep import SweepResult, sweep
from ..rules.params import Options, Parameter, declared, options
from ..rules.states import Kind, Status, StopReason
from ..rules.target import Target
from . import render
from .charts import sweep_png
from .progress import ProgressBar

__all__ = ["PanelRun", "Field", "FIELDS", "field", "SweepPanel", "sweep_panel"]

_WIDE = {"description_width": "initial"}


class PanelRun(Protocol):
    """What the panel needs of the notebook's run (``runbook.notebook.run.Run`` is one):
    where and what to sweep, the run's parameters, and its outcome and record to add to."""

    kind: Kind
    run_id: str
    opts: Options
    target: Target
    database: Database
    params: dict[str, Any]
    outcome: dict[str, Any]
    identity: dict[str, Any]  # the database's, as start() read it
    demo: bool  # the embedded demo database (no database name to type)

    def record(self) -> dict[str, Any]: ...


# The sweep parameters the panel lets the engineer change, in its order; everything about
# them (type, label, help, rule, default) comes from their declaration in rules.params.
FIELDS = ("stale_after_days", "cutoff", "batch_size", "max_batches", "max_seconds")
# The panel's own wording where the name alone would mislead: its cutoff replaces the days.
_LABELS = {"cutoff": "fixed cutoff"}
_PLACEHOLDERS = {"cutoff": "or a fixed UTC cutoff, e.g. 2026-11-01T00:00:00Z"}


@dataclass(frozen=True)
class Field:
    """One setting of the panel, as its declared parameter says: the label (the name, in
    words), the tooltip (help, allowed values, default) and, for numbers, the declared range."""

    parameter: Parameter
    label: str
    tooltip: str
    low: float | None
    high: float | None

    @property
    def name(self) -> str:
        return self.parameter.name

    @property
    def default(self) -> object:
        return self.parameter.default


def field(name: str) -> Field:
    """The panel field of the sweep notebook's parameter ``name`` (KeyError if it has none)."""
    p = declared(Kind.SWEEP)[name]
    allowed = p.allowed
    default = p.default if p.default != "" else "none"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    tooltip = f"{name}: {p.help}. Allowed: {allowed}; default {default}"
    return Field(p, _LABELS.get(name, name.replace("_", " ")), tooltip, p.low, p.high)


@dataclass(frozen=True)
class _Shown:
    """A preview on screen, and the settings it was made with."""

    opts: Options
    report: PreviewReport


def _count_typed(text: str) -> int | None:
    digits = text.strip().replace(",", "").replace("_", "").replace(" ", "")
    return int(digits) if digits.isdigit() else None


def _setting(value: Any) -> Any:
    """A field's value as ``options()`` takes it: an empty text is no value."""
    return (value.strip() or None) if isinstance(value, str) else value


class SweepPanel:
    """The widgets and their callbacks; ``widget`` is what the notebook cell displays.

    Callbacks never raise: errors (a bad setting, a refused sweep, a database error) are
    shown in the panel's message line. What they write: Preview nothing; Execute the
    rows of a live sweep (and its ledger: a new run id per Execute), from a background
    thread, then ``run.outcome["preview"]``, ``run.outcome["sweep"]`` (the latest Execute)
    and one entry per Execute in ``run.outcome["panel_runs"]`` for ``run.finish()``.
    """

    def __init__(self, run: PanelRun) -> None:
        import ipywidgets as widgets

        self.run = run
        self.shown: _Shown | None = None
        self.running = False
        self.last_result: SweepResult | None = None
        self.worker: threading.Thread | None = None
        self._stop = threading.Event()
        # Callbacks (subshell thread) and the sweep's thread both change the panel's state.
        self._lock = threading.RLock()
        current = run.opts.to_dict()

        def named(widget: Any, name: str) -> Any:
            widget.add_class(f"runbook-{name}")
            return widget

        kinds = {float: widgets.FloatText, int: widgets.IntText, str: widgets.Text}
        # Each setting: a declared parameter, showing the run's value (its default unless given).
        self.fields: dict[str, Any] = {}
        for name in FIELDS:
            spec = field(name)
            value = current[name]
            extra: dict[str, Any] = {}
            if spec.parameter.type is str:
                value = value or ""
                extra = {"placeholder": _PLACEHOLDERS.get(name, ""), "layout": widgets.Layout(width="420px")}
            widget = kinds[spec.parameter.type](
                value=value, description=spec.label, tooltip=spec.tooltip, style=_WIDE, **extra
            )
            self.fields[name] = named(widget, name.replace("_", "-"))
        self.days = self.fields["stale_after_days"]
        self.cutoff = self.fields["cutoff"]
        self.batch_size = self.fields["batch_size"]
        self.max_batches = self.fields["max_batches"]
        self.max_seconds = self.fields["max_seconds"]
        self.preview_button = named(
            widgets.Button(description="Preview", icon="search", tooltip="Show the next batch (reads only)"), "preview-button"
        )
        self.message = named(widgets.HTML(value=""), "message")
        self.preview_html = named(widgets.HTML(value=""), "preview")
        # JupyterLab's own class for rendered HTML: the table looks like the one in cell outputs.
        self.preview_html.add_class("jp-RenderedHTMLCommon")
        self.confirm = named(
            widgets.Text(value="", placeholder="type the candidate count", description="confirm count", disabled=True, style=_WIDE),
            "confirm",
        )
        # On anything but the demo, Execute also wants the database's name typed: the count alone
        # does not say which database a sweep is about to change.
        self.database_name = "" if run.demo else str(run.identity.get("database") or "")
        self.confirm_db = named(
            widgets.Text(
                value="", placeholder=f"type the database name: {self.database_name}", description="confirm database",
                disabled=True, style=_WIDE, layout=widgets.Layout(display="none" if run.demo else "flex"),
            ),
            "confirm-db",
        )
        self.execute_button = named(
            widgets.Button(
                description="Execute", icon="play", button_style="danger", disabled=True,
                tooltip="Sweep with the previewed settings (writes)",
            ),
            "execute-button",
        )  # fmt: skip
        self.stop_button = named(
            widgets.Button(description="Stop", icon="stop", disabled=True, tooltip="Stop after the batches in flight"),
            "stop-button",
        )
        self.progress_box = named(widgets.VBox([]), "progress-box")
        self.result_html = named(widgets.HTML(value=""), "result")
        self.chart = named(widgets.Image(format="png", value=b"", layout=widgets.Layout(display="none")), "chart")

        for setting in self.fields.values():
            setting.observe(self._on_settings_change, names="value")
        self.cutoff.observe(self._on_cutoff_change, names="value")
        self.confirm.observe(self._on_confirm_change, names="value")
        self.confirm_db.observe(self._on_confirm_change, names="value")
        self.preview_button.on_click(self._on_preview)
        self.execute_button.on_click(self._on_execute)
        self.stop_button.on_click(self._on_stop)
        self._on_cutoff_change()

        where = "the demo database" if run.demo else f"database {run.identity.get('database')} (NOT the demo)"
        title = widgets.HTML(
            value=f"<b>Sweep {html.escape(run.target.schema)}.{html.escape(run.target.table)}</b> · run {html.escape(run.run_id)}"
            f" · <span style='background:{'#d1e7dd' if run.demo else '#f8d7da'};padding:2px 6px'>{html.escape(where)}</span>"
        )
        self.widget = named(
            widgets.VBox(
                [
                    title,
                    widgets.HBox([self.days, self.cutoff]),
                    widgets.HBox([self.batch_size, self.max_batches, self.max_seconds]),
                    self.preview_button,
                    self.message,
                    self.preview_html,
                    widgets.HBox([self.confirm, self.confirm_db, self.execute_button, self.stop_button]),
                    self.progress_box,
                    self.result_html,
                    self.chart,
                ]
            ),
            "panel",
        )

    # -- state -----------------------------------------------------------------------

    def ready(self) -> bool:
        """True when Execute may run: a preview of the current settings is shown and confirmed."""
        if self.shown is None or self.running or self.shown.report.candidates == 0:
            return False
        if self.database_name and self.confirm_db.value.strip() != self.database_name:
            return False
        return _count_typed(self.confirm.value) == self.shown.report.candidates

    def wait(self, timeout: float | None = None) -> SweepResult | None:
        """Block until the sweep started by Execute (if any) has finished; return its result.

        For tests and scripts: the panel itself never waits. Raises TimeoutError when the
        sweep is still running after ``timeout`` seconds.
        """
        worker = self.worker
        if worker is not None:
            worker.join(timeout)
            if worker.is_alive():
                raise TimeoutError(f"the sweep is still running after {timeout} s")
        return self.last_result

    def _refresh(self) -> None:
        with self._lock:
            self.execute_button.disabled = not self.ready()
            self.preview_button.disabled = self.running
            self.stop_button.disabled = not self.running or self._stop.is_set()

    def _say(self, text: str, level: str = "error") -> None:
        self.message.value = render.notice(text, level) if text else ""

    def _forget_preview(self, why: str) -> None:
        with self._lock:
            if self.shown is not None:
                self.shown = None
                self.preview_html.value = render.notice(why, "warning")
            self.confirm.value = ""
            self.confirm.disabled = True
            self.confirm_db.value = ""
            self.confirm_db.disabled = True
        self._refresh()

    def current_options(self) -> Options:
        """The settings as validated Options (live, without fingerprint); raises ParameterError."""
        raw: dict[str, object] = dict(self.run.opts.to_dict())
        raw.update({name: _setting(widget.value) for name, widget in self.fields.items()})
        raw.update(dry_run=False, expect_fingerprint="")
        return options(**raw)

    def _connect(self, what: str) -> Conn:
        return connect(self.run.database, purpose=f"{self.run.kind}/{self.run.run_id}/panel-{what}")

    # -- callbacks -------------------------------------------------------------------

    def _on_settings_change(self, change: Any = None) -> None:
        if not self.running:
            self._say("")
        self._forget_preview("Settings changed since the preview: press Preview again.")

    def _on_cutoff_change(self, change: Any = None) -> None:
        # A fixed cutoff replaces stale_after_days; greying the days out says so.
        self.days.disabled = bool(self.cutoff.value.strip())

    def _on_confirm_change(self, change: Any = None) -> None:
        self._refresh()

    def _on_preview(self, button: Any = None) -> None:
        """Validate the settings and show the next batch; reads only, never raises."""
        if self.running:
            self._say("A sweep is running: press Stop, or wait for it to finish, before a new preview.")
            return
        self._say("")
        self._forget_preview("")
        self.preview_html.value = ""
        try:
            opts = self.current_options()
        except ParameterError as exc:
            self._say(str(exc))
            return
        try:
            with self._connect("preview") as conn:
                report = preview(conn, self.run.target, opts)
        except Exception as exc:  # shown in the panel: a callback's exception only reaches the log console
            self._say(f"Preview failed: {type(exc).__name__}: {exc}")
            return
        with self._lock:
            self.shown = _Shown(opts, report)
            self.preview_html.value = render.panel_preview(report, opts)
            self.confirm.disabled = report.candidates == 0
            self.confirm_db.disabled = report.candidates == 0
        self._refresh()

    def _on_execute(self, button: Any = None) -> None:
        """Start the sweep of the confirmed preview in a background thread; never raises.

        Re-checks everything the disabled button stands for, since click() and queued
        clicks reach this callback whatever the button's state.
        """
        with self._lock:
            shown = self.shown
            if shown is None or not self.ready():
                self._say(
                    "Execute refused: press Preview for the current settings and type the candidate count first"
                    + (f" and the database name ({self.database_name})." if self.database_name else ".")
                )
                self._refresh()
                return
            try:
                now = self.current_options()
            except ParameterError as exc:
                self._say(str(exc))
                self._forget_preview("Settings are invalid: fix them and press Preview again.")
                return
            if now != shown.opts:
                self._forget_preview("Settings changed since the preview: press Preview again.")
                self._say("Execute refused: the settings differ from the previewed ones.")
                return
            # One preview, one Execute: a second sweep needs a fresh look at the table.
            self.shown = None
            self.confirm.value = ""
            self.confirm.disabled = True
            self.confirm_db.value = ""
            self.confirm_db.disabled = True
            self.running = True
            self._stop.clear()
        self._refresh()
        self._say("Sweeping… press Stop to stop after the batches in flight.", "info")
        self.result_html.value = ""
        self.chart.layout.display = "none"
        bar = ProgressBar()
        self.progress_box.children = [bar.widget]
        self.worker = threading.Thread(target=self._sweep, args=(shown, bar), name="runbook-panel-sweep", daemon=True)
        self.worker.start()

    def _on_stop(self, button: Any = None) -> None:
        """Ask the running sweep to stop at the next batch boundary; writes nothing."""
        if not self.running:
            return
        self._stop.set()
        self._refresh()
        self._say("Stopping after the batches in flight…", "info")

    def _sweep(self, shown: _Shown, bar: ProgressBar) -> None:
        # The preview's own cutoff (from the server clock, already in the past), not a fresh
        # one: exactly the previewed candidates are eligible, and the fingerprint pins batch 1.
        opts = replace(shown.opts, dry_run=False, cutoff=shown.report.cutoff_utc, expect_fingerprint=shown.report.fingerprint)
        # A run of its own: resuming the notebook's run id would merge this Execute's
        # parameters into an earlier one's ledger row.
        rid = new_run_id()
        live = opts.to_dict()
        parameters = {
            **self.run.params,
            "run_id": rid,
            "notebook_run_id": self.run.run_id,
            **{name: live[name] for name in self.fields},  # the cutoff: the preview's
            "dry_run": False,
            "expect_fingerprint": shown.report.fingerprint,
            "source": "controls",
        }
        entry: dict[str, Any] = {"run_id": rid, "parameters": parameters}
        with self._lock:
            self.run.outcome.setdefault("panel_runs", []).append(entry)
        try:
            # The panel run's own id in the application name, where the lock holder's message
            # and the runner look for it: litellm-runbook/sweep/<rid>/panel.
            with connect(self.run.database, purpose=f"sweep/{rid}/panel") as conn:
                result = sweep(
                    conn, self.run.target, opts, run_id=rid, parameters=parameters, on_batch=bar,
                    should_stop=self._stop.is_set,
                )  # fmt: skip
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            entry.update(stop_reason=StopReason.FAILED, error=error)
            self.run.outcome.update({"status": Status.FAILED, "step": "controls", "error": error})
            self._seal(rid, parameters, {"status": Status.FAILED, "error": error})
            self._say(f"Sweep refused or failed: {type(exc).__name__}: {exc}")
        else:
            entry.update(stop_reason=result.stop_reason, changed=result.changed)
            status = Status.FAILED if _failed(result.stop_reason) else Status.SUCCEEDED
            entry["record_file"] = self._seal(rid, parameters, {"status": status, Kind.SWEEP: result.to_dict()})
            self._record(shown, result, bar)
        finally:
            with self._lock:
                self.running = False
            self._refresh()

    def _seal(self, rid: str, parameters: dict[str, Any], outcome: dict[str, Any]) -> str:
        """This Execute's own sealed record in the run folder (the notebook open in
        JupyterLab is not a file the runbook keeps); its checksum goes into its ledger row."""
        record = {
            **self.run.record(), "run_id": rid, "notebook_run_id": self.run.run_id, "source": "controls",
            "parameters": parameters, "outcome": outcome,
        }  # fmt: skip
        try:
            conn: Conn | None = self._connect(f"seal-{rid}")
        except Exception:  # noqa: BLE001 - the file is sealed even when the database is gone
            conn = None
        try:
            sealed = seal_record_file(run_dir(), kind=Kind.SWEEP, run_id=rid, record=record, conn=conn)
            seal_notebook_copy(run_dir(), run_id=rid, conn=conn)  # the notebook as saved now, beside it
            return str(sealed)
        finally:
            if conn is not None:
                conn.close()

    def _record(self, shown: _Shown, result: SweepResult, bar: ProgressBar) -> None:
        self.last_result = result
        bar.finish(result)
        if self.run.outcome.get("step") == "controls":
            # An earlier Execute from this panel failed; this one is what the record should say.
            for key in ("status", "step", "error"):
                self.run.outcome.pop(key, None)
        self.run.outcome[Kind.PREVIEW] = shown.report.to_dict()
        self.run.outcome[Kind.SWEEP] = result.to_dict()
        if _failed(result.stop_reason):
            self.run.outcome["status"] = Status.FAILED
        if result.batches:
            # Drawn once, at the end: matplotlib stays off the batches' path.
            self.chart.value = sweep_png(result)
            self.chart.layout.display = ""
        self._say("")
        # Last: the result text is what a watcher (or the browser test) waits for.
        self.result_html.value = render.panel_result(result)


def _failed(stop_reason: str) -> bool:
    return bool(stop_reason) and StopReason(stop_reason).failed


def sweep_panel(run: PanelRun) -> Any:
    """Build the control panel for ``run`` and return its top widget (an ipywidgets VBox).

    Displays nothing itself and writes nothing until Execute is pressed; the widgets'
    callbacks keep the SweepPanel alive.
    """
    return SweepPanel(run).widget
