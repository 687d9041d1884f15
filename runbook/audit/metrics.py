"""Prometheus text-format metrics for one run, for node_exporter's textfile collector.

The file is rewritten after every batch (write to a temporary name, then rename), so a
scraper never reads half a file and a dashboard shows progress while the run goes on.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_metrics", "metrics_path"]


def metrics_path(directory: str, run_id: str) -> Path:
    return Path(directory) / f"litellm_runbook_{run_id}.prom"


def _labels(labels: dict[str, str]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def write_metrics(
    directory: str,
    *,
    run_id: str,
    kind: str,
    table: str,
    rows_changed: int,
    rows_remaining: int | None,
    batch_seconds: list[float],
    outcome: str,
    run_seconds: float,
    finished: bool,
) -> Path:
    """Write (atomically replace) the run's metrics file; return its path."""
    base = {"run_id": run_id, "kind": kind, "table": table}
    lb = _labels(base)
    durations = sorted(batch_seconds)

    def q(p: float) -> float:
        return durations[min(len(durations) - 1, int(p * len(durations)))] if durations else 0.0

    lines = [
        "# HELP litellm_runbook_rows_changed_total Rows this run changed.",
        "# TYPE litellm_runbook_rows_changed_total counter",
        f"litellm_runbook_rows_changed_total{lb} {rows_changed}",
        "# HELP litellm_runbook_rows_remaining Candidates still left (estimate while running, counted at the end).",
        "# TYPE litellm_runbook_rows_remaining gauge",
        f"litellm_runbook_rows_remaining{lb} {rows_remaining if rows_remaining is not None else 'NaN'}",
        "# HELP litellm_runbook_batches_total Batches committed by this run.",
        "# TYPE litellm_runbook_batches_total counter",
        f"litellm_runbook_batches_total{lb} {len(durations)}",
        "# HELP litellm_runbook_batch_duration_seconds Wall time of each committed batch.",
        "# TYPE litellm_runbook_batch_duration_seconds summary",
        *(f"litellm_runbook_batch_duration_seconds{_labels({**base, 'quantile': str(p)})} {q(p):.6f}" for p in (0.5, 0.9, 0.99)),
        f"litellm_runbook_batch_duration_seconds_sum{lb} {sum(durations):.6f}",
        f"litellm_runbook_batch_duration_seconds_count{lb} {len(durations)}",
        "# HELP litellm_runbook_run_duration_seconds Wall time of the run so far.",
        "# TYPE litellm_runbook_run_duration_seconds gauge",
        f"litellm_runbook_run_duration_seconds{lb} {run_seconds:.3f}",
        "# HELP litellm_runbook_run_outcome 1 for the run's current outcome (running until it ends).",
        "# TYPE litellm_runbook_run_outcome gauge",
        f"litellm_runbook_run_outcome{_labels({**base, 'outcome': outcome})} 1",
        "# HELP litellm_runbook_run_finished 1 once the run has ended.",
        "# TYPE litellm_runbook_run_finished gauge",
        f"litellm_runbook_run_finished{lb} {1 if finished else 0}",
    ]
    path = metrics_path(directory, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".prom.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
