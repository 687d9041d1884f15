"""Where the runbook's messages go: the ``logging`` logger ``runbook`` and its children.

A library logs and never prints, so a program embedding it routes the lines as it likes.
The notebooks (``runbook.start``) and the command line call ``show_on_stdout()``, so a
headless run keeps its progress lines and warnings in the executed notebook and the log.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["get", "show_on_stdout"]

ROOT = "runbook"


def get(name: str) -> logging.Logger:
    """The logger of module ``name`` (pass ``__name__``): a child of ``runbook``."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


class _CurrentStdout(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is when a line is logged: a kernel, pytest's
    capture and papermill swap it, and the line must land where the cell's output goes."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it
        pass


def show_on_stdout(level: int = logging.INFO) -> None:
    """Print the runbook's messages (``level`` and above) on stdout, once per process,
    unless the embedding program configured the ``runbook`` logger itself. The records
    still propagate (to the root logger's handlers, pytest's caplog among them)."""
    logger = logging.getLogger(ROOT)
    if logger.handlers:
        return
    handler = _CurrentStdout()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
