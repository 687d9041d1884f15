"""The runbook's version, and the checkout it runs from (its notebooks, its runs folder)."""

from pathlib import Path

__version__ = "0.1.0"

# The folder holding runbook/, notebooks/ and runs/ (an editable install runs from it).
PROJECT_DIR = Path(__file__).resolve().parent.parent
