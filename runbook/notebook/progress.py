"""Progress of a running sweep: a widget bar in JupyterLab, a log line now and then headless.

Both are ``on_batch`` callbacks for ``runbook.ops.sweep.sweep``: called after each committed
batch with the running ``SweepResult`` and that ``BatchResult``. They only measure and
report (the texts are ``render``'s); they never touch the database, and draw no chart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from .. import logs
from ..ops.sweep import BatchResult, SweepResult
from ..rules.states import StopReason
from . import render

__all__ = ["Progress", "measure", "ProgressBar", "progress_reporter"]

OnBatch = Callable[[SweepResult, BatchResult], None]
log = logs.get(__name__)


@dataclass(frozen=True)
class Progress:
    """Where a sweep stands after one batch."""

    batch: int
    batch_rows: int
    batch_ms: float
    done: int
    total: int  # candidates at start, or rows done when later passes found more
    percent: float
    rows_per_s: float
    seconds_left: float | None  # None while nothing has been changed yet


def measure(result: SweepResult, batch: BatchResult, elapsed_s: float) -> Progress:
    """Progress of ``result`` after ``batch``, ``elapsed_s`` seconds into the sweep. Pure.

    With several workers a round's batches are all in ``result`` before the first one's
    callback: the rows counted are those of ``batch`` and every batch before it."""
    later = 0
    for b in reversed(result.batches):
        if b.number == batch.number:
            break
        later += b.changed
    else:
        later = 0
    done = result.changed - later
    # A later pass can take rows that became candidates after the snapshot: never show >100 %.
    total = max(result.candidates_at_start, done)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    left = (total - done) / rate if rate > 0 else None
    return Progress(
        batch=batch.number,
        batch_rows=batch.changed,
        batch_ms=batch.seconds * 1000,
        done=done,
        total=total,
        percent=100.0 * done / total if total else 100.0,
        rows_per_s=rate,
        seconds_left=left,
    )


@dataclass
class ProgressBar:
    """An ipywidgets bar and label, updated per batch; ``widget`` is the box to show.

    Each update sends a comm message at once, so the bar moves in JupyterLab even while
    the sweep keeps the kernel busy (also when it runs inside a button callback).
    """

    started: float = field(default_factory=time.monotonic)
    widget: Any = None
    bar: Any = None
    label: Any = None
    last: Progress | None = None

    def __post_init__(self) -> None:
        import ipywidgets as widgets

        self.bar = widgets.IntProgress(value=0, min=0, max=1, description="sweep", bar_style="info")
        self.label = widgets.Label(value="waiting for the first batch")
        self.widget = widgets.VBox([self.bar, self.label])
        self.widget.add_class("runbook-progress")

    def __call__(self, result: SweepResult, batch: BatchResult) -> None:
        """Move the bar and rewrite the label; writes nothing else."""
        p = measure(result, batch, time.monotonic() - self.started)
        self.last = p
        self.bar.max = max(p.total, 1)
        self.bar.value = p.done
        self.label.value = render.progress_label(p, len(result.batches))

    def finish(self, result: SweepResult) -> None:
        """Colour the bar by how the sweep ended (green when done, orange when it stopped early)
        and replace the time left by the stop reason."""
        self.bar.bar_style = "success" if result.stop_reason == StopReason.DONE else "warning"
        self.label.value = render.progress_final(self.last, result)


def progress_reporter(interactive: bool, *, every_s: float = 2.0) -> OnBatch:
    """The ``on_batch`` callback for a sweep, timed from this call.

    ``interactive`` (JupyterLab): displays a ProgressBar with IPython's display() at the
    first batch (a dry run, which has no batches, shows nothing) and updates it in place.
    Headless: logs a ``render.progress_line`` (INFO, logger ``runbook.notebook.progress``;
    ``start()`` shows the runbook's log on stdout, so papermill's log and the executed
    notebook both have it): for the first batch, then at most one per ``every_s``
    seconds, and for the batch that reaches the candidate count. (Every batch is in the
    run's record; a line per batch would make a 300-batch sweep's notebook 300 outputs
    long and cost the kernel a message each.)
    """
    started = time.monotonic()
    if not interactive:
        logged = [-math.inf]

        def line(result: SweepResult, batch: BatchResult) -> None:
            now = time.monotonic()
            p = measure(result, batch, now - started)
            if now - logged[0] >= every_s or p.done >= p.total:
                logged[0] = now
                log.info(render.progress_line(p) + render.signals_text(result.signals, result.pauses))

        return line

    holder: list[ProgressBar] = []

    def bar(result: SweepResult, batch: BatchResult) -> None:
        if not holder:
            from IPython.display import display

            holder.append(ProgressBar(started=started))
            # IPython's display() carries no annotations.
            cast(Callable[..., None], display)(holder[0].widget)
        holder[0](result, batch)

    return bar
