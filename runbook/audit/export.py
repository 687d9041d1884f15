"""One run's executed notebook as a self-contained HTML page, to attach to an incident
ticket (``python -m runbook export RUN_ID``).

The notebook is the one in the run folder whose file and record name the run id: of several
(a run resumed under its id, or an inspect and a preview given the same id), the newest
sweep or undo notebook, the file the ledger seals, else the newest of any kind; the others
are named. It is verified first (``runbook.audit.verify``): one that fails (edited, unknown
to the ledger when it should not be, unverifiable) is refused unless forced, and a forced
export says on its first line that it failed. The page loads nothing from elsewhere: the
CDN scripts of nbconvert's template (require.js, MathJax, mermaid, widgets) are left out and
images are embedded. The notebooks never hold a credential (the runner refuses
credential-bearing parameters), and the page is checked for it anyway: it is not written
when it contains the password of ``DATABASE_URL`` or ``PGPASSWORD``.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from ..db.connect import Database
from ..errors import ParameterError, RunbookError
from ..rules.params import _run_id
from ..rules.states import Kind
from .sealing import run_dir
from .verify import Verdict, read_any_record, verify_paths

__all__ = ["Exported", "find_notebooks", "passwords", "export_run"]

# nbconvert's lab page without what it would fetch from a CDN when opened.
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


@dataclass(frozen=True)
class Exported:
    """What ``export_run`` wrote: the page, the notebook it shows, how that verified (None:
    not verified, forced), and the run's other notebooks in the folder."""

    html: Path
    notebook: Path
    verdict: Verdict | None
    others: list[Path]


def find_notebooks(run_id: str, folder: Path) -> list[Path]:
    """The executed notebooks of run ``run_id`` in ``folder``, the one to export first (the
    newest sweep or undo one, else the newest). Reads only. Raises ParameterError for a
    malformed run id or one no notebook there is named after."""
    if not _run_id("run_id", run_id):
        raise ParameterError("run_id", run_id, "the run id of an executed notebook in the run folder")
    found = []
    for path in sorted(folder.glob(f"*_{run_id}.ipynb"), reverse=True):  # newest first: names start with the UTC time
        record = read_any_record(path)
        if record is not None and str(record.get("run_id")) != run_id:
            continue  # another run's, whose id ends with this one
        found.append((record is None or record.get("notebook") not in (Kind.SWEEP, Kind.UNDO), path))
    if not found:
        raise ParameterError("run_id", run_id, f"the run id of an executed notebook in {folder}: none is named after it")
    return [path for _, path in sorted(found, key=lambda item: item[0])]  # stable: newest first within each


def passwords(env: Mapping[str, str]) -> list[str]:
    """The database passwords ``env`` holds: of ``DATABASE_URL`` and ``PGPASSWORD``."""
    found = [env.get("PGPASSWORD", "")]
    url = env.get("DATABASE_URL", "")
    if url:
        try:
            from psycopg.conninfo import conninfo_to_dict

            found.append(str(conninfo_to_dict(url).get("password") or ""))
        except Exception:  # noqa: BLE001 - a DSN psycopg cannot parse: still look for its password
            pass
        try:
            found.append(unquote(urlsplit(url).password or ""))
        except ValueError:
            pass
    return sorted({p for p in found if p})


def _holds(page: str, secret: str) -> bool:
    """Whether ``page`` holds ``secret`` as written, or escaped as HTML, JSON or a URL would."""
    forms = {secret, html.escape(secret), html.escape(secret, quote=False), json.dumps(secret)[1:-1], quote(secret, safe="")}
    return any(form in page for form in forms)


def _banner(path: Path, verdict: Verdict | None, why_unverified: str) -> str:
    """The first cell of the page: what it is, and how its notebook verified."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    head = f"**litellm-runbook export** of `{path.name}`, {stamp}."
    if verdict is None:
        return f"{head}\n\n**NOT VERIFIED** against the ledger (exported with --force): `{why_unverified}`"
    word = f"**{verdict.state.upper()}**, exported with --force" if verdict.failed else str(verdict.state)
    return f"{head}\n\nVerified against the ledger's seals: {word}: `{verdict.detail}`"


def _page(path: Path, banner: str) -> str:
    """The notebook at ``path`` as one HTML page, ``banner`` first."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    # nbformat and nbconvert carry no annotations.
    try:
        nb = nbformat.read(str(path), as_version=4)  # type: ignore[no-untyped-call]
    except Exception as exc:  # noqa: BLE001 - an edit may have left it unreadable
        raise RunbookError(f"{path.name} cannot be read as a notebook ({type(exc).__name__}): nothing was written") from None
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(banner))  # type: ignore[no-untyped-call]
    exporter = HTMLExporter(  # type: ignore[no-untyped-call]
        extra_loaders=[jinja2.DictLoader({"runbook_export.html.j2": _TEMPLATE})],
        template_file="runbook_export.html.j2", embed_images=True,
    )  # fmt: skip
    page, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem, "path": str(path.parent)}})
    return str(page)


def export_run(
    run_id: str, database: Database | None, *, folder: Path | None = None, out: Path | None = None, force: bool = False,
    env: Mapping[str, str] | None = None,
) -> Exported:  # fmt: skip
    """Write run ``run_id``'s executed notebook (``find_notebooks``) as a self-contained HTML
    page to ``out`` (default ``<folder>/<notebook's stem>.html``; ``folder`` defaults to the
    run folder), after verifying it against the ledger of ``database`` (None: not verified,
    only with ``force``). Writes that one file, replacing it. Raises ParameterError when no
    notebook is named after the run; RunbookError, writing nothing, when the notebook fails
    verification or cannot be verified (unless ``force``), cannot be read, or the page
    contains a password of ``env`` (default: this process's environment)."""
    folder = folder or run_dir()
    path, *others = find_notebooks(run_id, folder)
    verdict: Verdict | None = None
    why_unverified = "no database to verify against"
    if database is not None:
        try:
            (verdict,) = verify_paths([path], database)
        except RunbookError as exc:
            if not force:
                raise RunbookError(f"{path.name} could not be verified ({exc}); --force exports it marked NOT VERIFIED") from None
            why_unverified = str(exc)
    elif not force:
        raise RunbookError(f"{path.name} cannot be verified without a database; --force exports it marked NOT VERIFIED")
    if verdict is not None and verdict.failed and not force:
        raise RunbookError(
            f"refusing to export {path.name}: {verdict.state} ({verdict.detail}); --force exports it anyway, "
            f"its first line saying it is {verdict.state}"
        )
    page = _page(path, _banner(path, verdict, why_unverified))
    leaked = [p for p in passwords(os.environ if env is None else env) if _holds(page, p)]
    if leaked:
        raise RunbookError(
            f"refusing to write the export of {path.name}: the page contains the database password "
            "(of DATABASE_URL or PGPASSWORD); nothing was written"
        )
    target = out or folder / f"{path.stem}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return Exported(target, path, verdict, others)
