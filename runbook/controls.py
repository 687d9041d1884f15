"""The interactive control panel of the sweep notebook (ipywidgets). Placeholder."""

from __future__ import annotations

from typing import Any

__all__ = ["sweep_panel"]


def sweep_panel(run: Any) -> Any:
    return None
