"""Every operator-supplied parameter: declared once, validated before any query runs.

``PARAMETERS`` is the one declaration of each notebook parameter (name, type, default,
rule, help, which notebooks take it). From it come the notebooks' ``parameters`` cells
(``parameters_cell``; a test fails when a notebook differs), the check of names
(``check_names``: an unknown name is refused with the closest declared one) and of values
(``options``). Papermill hands parameters over as whatever Python value the command
line parsed (``-p batch_size abc`` arrives as the string ``'abc'``), so each check
accepts exactly one kind of value and names the parameter, the value and what is allowed.

Credentials never travel as parameters (papermill writes every parameter into the
executed notebook): ``refuse_secrets`` refuses them by name and by value, recursively
through lists and dicts, without ever echoing the value.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone

from ..errors import ParameterError
from .states import Kind
from .targets import check_target_name

__all__ = [
    "MAX_BATCH_SIZE",
    "KINDS",
    "Parameter",
    "PARAMETERS",
    "declared",
    "CELLS",
    "cell_source",
    "parameters_cell",
    "check_names",
    "check_int",
    "check_number",
    "check_bool",
    "check_cutoff",
    "check_cutoff_recent",
    "Options",
    "options",
    "refuse_secrets",
]

# Larger batches hold more row locks for longer than an incident-time sweep should;
# 100K rows is already ~150 MB of TOASTed file_object rewritten in one transaction.
MAX_BATCH_SIZE = 100_000


def check_int(name: str, value: object, low: int, high: int) -> int:
    """Return ``value`` if it is an int (not a bool) in [low, high]; else ParameterError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParameterError(name, value, f"an integer from {low:,} to {high:,}".replace(",", "_"))
    return value


def check_number(name: str, value: object, low: float, high: float, unit: str) -> float:
    """Return ``value`` as float if it is a finite int or float in [low, high]."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        try:
            # An int beyond float range (1 followed by 400 zeros) is out of range, not a crash.
            ok = math.isfinite(float(value)) and low <= value <= high  # type: ignore[arg-type,operator]
        except OverflowError:
            ok = False
    if not ok:
        raise ParameterError(name, _shown(value), f"a number of {unit} from {low:g} to {high:g}")
    return float(value)  # type: ignore[arg-type]


def _shown(value: object) -> object:
    """The value as an error message may show it: a huge number is cut, not printed whole."""
    text = repr(value)
    return value if len(text) <= 80 else _Abbreviated(text[:40] + "..." + f" ({len(text)} characters)")


class _Abbreviated(str):
    def __repr__(self) -> str:
        return str(self)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(name, value, "True or False (papermill: -p NAME True)")
    return value


def check_path(name: str, value: object) -> str:
    """A file-system path (need not exist yet), or '' for none; a relative path is made
    absolute against the current directory (the operator's: the runner resolves paths
    before the kernel starts in notebooks/), so the record shows where it points."""
    if not isinstance(value, str) or len(value) > 4096 or "\x00" in value:
        raise ParameterError(name, _shown(value), "a path (string) or '' for none")
    return os.path.abspath(value) if value else value


def check_fingerprint(name: str, value: object) -> str:
    """A preview fingerprint (16 hex digits), or '' for none."""
    if not isinstance(value, str) or not (value == "" or (len(value) == 16 and all(c in "0123456789abcdef" for c in value))):
        raise ParameterError(name, value, "the 16 hex digits a preview printed, or '' for none")
    return value


def check_cutoff(name: str, value: object) -> datetime:
    """An absolute UTC cutoff, as a naive UTC datetime (format only: whether it is at least
    a day in the past is the server clock's call, ``check_cutoff_recent``).

    Accepts an ISO 8601 string or a datetime; a value with an offset is converted to UTC,
    a naive one is taken as UTC (the column is UTC wall-clock without time zone).
    """
    parsed: datetime | None = None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            parsed = None
    if parsed is None:
        raise ParameterError(name, _shown(value), "an ISO 8601 UTC timestamp such as '2026-11-01T00:00:00Z'")
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def check_cutoff_recent(cutoff: datetime, server_now: datetime) -> datetime:
    """``cutoff`` if it is at least one day before ``server_now`` (the database server's
    clock, naive UTC: the clock the rows were stamped by, not this machine's)."""
    from datetime import timedelta

    if cutoff > server_now - timedelta(days=1):
        raise ParameterError(
            "cutoff", cutoff.isoformat() + "Z",
            f"a timestamp at least 1 day before the database server's clock ({server_now.isoformat(timespec='seconds')}Z)",
        )  # fmt: skip
    return cutoff


MAX_WORKERS = 4  # connections writing at once; more only adds contention on a small server
# 36 at most: the run id travels in the session's application_name ("litellm-runbook/
# preview/<run id>"), which PostgreSQL cuts at 63 bytes, and it must arrive whole there (the
# lock holder's message, the runner ending a dead kernel's sessions).
MAX_RUN_ID = 36
_RUN_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,35}"
_RUN_ID_RULE = "1-36 letters, digits, '_', '-' or '.', starting with a letter or digit; '' makes one"


@dataclass(frozen=True)
class Options:
    """Validated run parameters; build with ``options()``, never directly from user input.

    Every field is a declared parameter (``PARAMETERS``) of the same name and default; a
    test fails when the two differ."""

    stale_after_days: float = 7.0
    cutoff: datetime | None = None
    batch_size: int = 1000
    max_batches: int = 5000
    max_seconds: float = 300.0
    dry_run: bool = True
    lock_timeout_s: float = 5.0
    statement_timeout_s: float = 60.0
    pause_s: float = 0.0
    max_rows: int = 1_000_000
    max_retries: int = 3
    stop_file: str = ""
    metrics_dir: str = ""
    expect_fingerprint: str = ""
    max_replication_lag_bytes: int = 64 * 1024 * 1024
    max_lock_waiters: int = 0
    pause_during_vacuum: bool = True
    health_pause_s: float = 2.0
    target_batch_ms: float = 0.0
    max_batch_wal_bytes: int = 0  # 0: the server's wal_buffers / workers
    max_rows_per_second: float = 0.0  # 0: no rate budget
    workers: int = 2  # batches written at once, each on its own connection
    allow_blind_health: bool = False  # sweep although a health signal cannot be read
    archive: bool = True  # delete and clear: every row archived before its batch commits
    archive_dir: str = ""  # '': archive/ of the checkout ($RUNBOOK_ARCHIVE_DIR)
    vacuum: bool = False  # after a delete or clear, VACUUM (ANALYZE) the table

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["cutoff"] = self.cutoff.isoformat() + "Z" if self.cutoff else None
        return out


KINDS = tuple(Kind)


@dataclass(frozen=True)
class Parameter:
    """One notebook parameter: the single place its name, type, default, range, help and
    notebooks live.

    A number is checked against its range (``low``..``high``, inclusive; ``unit`` names what
    a float counts); anything else by its ``rule``. ``option``: an ``Options`` field of the
    same name and default (False for the run ids, which name runs). ``cell``: the notebook
    cell that lists it (``CELLS``): ``parameters``, or ``tuning`` / ``health`` above it."""

    name: str
    type: type
    default: object
    help: str
    notebooks: frozenset[str]
    low: float | None = None
    high: float | None = None
    unit: str = ""
    rule: Callable[[str, object], object] | None = None
    option: bool = True
    cell: str = "parameters"

    def check(self, name: str, value: object) -> object:
        """The validated value; ParameterError naming ``name``, the value and the rule."""
        if self.rule is not None:
            return self.rule(name, value)
        if self.type is bool:
            return check_bool(name, value)
        assert self.low is not None and self.high is not None, f"{self.name}: a number needs its range"
        if self.type is int:
            return check_int(name, value, int(self.low), int(self.high))
        return check_number(name, value, self.low, self.high, self.unit)

    @property
    def allowed(self) -> str:
        """What the check allows, in the words its ParameterError uses."""
        try:
            self.check(self.name, object())
        except ParameterError as exc:
            return exc.allowed
        return ""

    def line(self) -> str:
        """``name: type = default  # help``: what ``papermill --help-notebook`` reads."""
        default = self.default
        if isinstance(default, float) and default.is_integer():
            default = int(default)  # `float = 7`, as an operator would type it
        shown = json.dumps(default) if isinstance(default, str) else repr(default)
        return f"{self.name}: {self.type.__name__} = {shown}  # {self.help}"


def _run_id(name: str, value: object) -> str:
    import re

    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not re.fullmatch(_RUN_ID_PATTERN, value):
        raise ParameterError(name, _shown(value), _RUN_ID_RULE)
    return value


def _kinds(*kinds: Kind) -> frozenset[str]:
    return frozenset(kinds)


_SELECT = _kinds(Kind.INSPECT, Kind.PREVIEW, Kind.SWEEP)
_WRITE = _kinds(Kind.SWEEP, Kind.UNDO)
_SWEEP = _kinds(Kind.SWEEP)

PARAMETERS: tuple[Parameter, ...] = (
    Parameter("target", str, "stale_responses",
              "what to clean: a target of python -m runbook targets (default: LiteLLM's stale response objects)",
              frozenset(Kind) - {Kind.HISTORY}, rule=check_target_name, option=False),
    Parameter("target", str, "", "show only the runs of this target (python -m runbook targets); empty shows all",
              _kinds(Kind.HISTORY), rule=lambda n, v: "" if v == "" else check_target_name(n, v), option=False),
    Parameter("days", float, 30.0, "show the runs of this many days back", _kinds(Kind.HISTORY),
              low=0.01, high=3650, unit="days", option=False),
    Parameter("stale_after_days", float, 7.0,
              "rows older than this many days are stale, at least 1 (LiteLLM default 7)", _SELECT,
              low=1, high=3650, unit="days"),
    Parameter("cutoff", str, "",
              "fixed UTC cutoff used instead of stale_after_days, ISO 8601 like 2026-11-01T00:00:00Z", _SELECT,
              rule=lambda n, v: None if v in (None, "") else check_cutoff(n, v)),
    Parameter("batch_size", int, 1000,
              "rows per batch, at most, 1 to 100000 (LiteLLM default 1000); the sweep takes fewer while rows write much WAL",
              _kinds(Kind.INSPECT, Kind.PREVIEW, Kind.SWEEP, Kind.UNDO), low=1, high=MAX_BATCH_SIZE),
    Parameter("max_batches", int, 5000, "stop after this many batches (transactions)", _WRITE, low=1, high=1_000_000),
    Parameter("max_seconds", float, 300.0, "stop at the first batch boundary after this many seconds", _WRITE,
              low=1, high=7 * 86400, unit="seconds"),
    Parameter("workers", int, 2,
              "batches written at once, each its own transaction on its own connection, 1 to 4 (1: one at a time)", _SWEEP,
              low=1, high=MAX_WORKERS),
    Parameter("dry_run", bool, True, "True writes nothing and only reports; False does the work",
              _kinds(Kind.SWEEP, Kind.UNDO, Kind.INDEX)),
    Parameter("max_rows", int, 1_000_000, "refuse to start when there are more candidates than this", _SWEEP,
              low=1, high=10**9, cell="tuning"),
    Parameter("archive", bool, True,
              "delete and clear targets: archive every row before its batch commits; False deletes without (recorded)",
              _SWEEP),
    Parameter("vacuum", bool, False,
              "after a delete or clear that changed rows, VACUUM (ANALYZE) the table (never by default)", _SWEEP),
    Parameter("expect_fingerprint", str, "",
              "an approved preview's fingerprint, with its cutoff; refuse if the first batch differs", _SWEEP,
              rule=check_fingerprint),
    Parameter("stop_file", str, "",
              "path (relative: to where you ran the command); the run stops at the next batch boundary once it exists", _WRITE,
              rule=check_path, cell="tuning"),
    Parameter("archive_dir", str, "",
              "folder of the archive (relative: to where you ran the command); empty: archive/ of the checkout", _WRITE,
              rule=check_path, cell="tuning"),
    Parameter("metrics_dir", str, "",
              "folder for a Prometheus textfile of this run (relative: to where you ran the command); empty for none", _WRITE,
              rule=check_path, cell="tuning"),
    Parameter("lock_timeout_s", float, 5.0, "seconds a batch may wait for a row lock before it rolls back", _WRITE,
              low=0.01, high=600, unit="seconds", cell="tuning"),
    Parameter("statement_timeout_s", float, 60.0, "seconds a batch statement may run before it rolls back", _WRITE,
              low=0.1, high=3600, unit="seconds", cell="tuning"),
    Parameter("max_retries", int, 3,
              "retries of a batch after a lock or statement timeout, each with half the rows; then the run stops", _WRITE,
              low=0, high=10, cell="tuning"),
    Parameter("pause_s", float, 0.0, "seconds to sleep between rounds of batches", _SWEEP,
              low=0, high=60, unit="seconds", cell="tuning"),
    Parameter("max_replication_lag_bytes", int, 64 * 1024 * 1024,
              "pause while the slowest standby is more than this many bytes of WAL behind (64 MiB)", _WRITE,
              low=0, high=2**50, cell="health"),
    Parameter("max_lock_waiters", int, 0, "pause while more sessions than this wait on locks on the table", _WRITE,
              low=0, high=10_000, cell="health"),
    Parameter("pause_during_vacuum", bool, True,
              "pause while a VACUUM of the table runs (not one the sweep itself started)", _WRITE, cell="health"),
    Parameter("health_pause_s", float, 2.0, "seconds between health checks while paused", _WRITE,
              low=0.05, high=600, unit="seconds", cell="health"),
    Parameter("allow_blind_health", bool, False,
              "True writes although this role cannot see a health signal (lag, vacuum); the record says so", _WRITE,
              cell="health"),
    Parameter("target_batch_ms", float, 0.0,
              "when above 0, a batch slower than 1.5x this halves the next one; 0 is off", _SWEEP,
              low=0, high=600_000, unit="milliseconds (0 keeps batch_size fixed)", cell="tuning"),
    Parameter("max_rows_per_second", float, 0.0,
              "when above 0, the sweep waits between rounds to change at most this many rows a second; 0 is off",
              _SWEEP, low=0, high=10**7, unit="rows a second (0: no budget)", cell="tuning"),
    Parameter("max_batch_wal_bytes", int, 0,
              "WAL budget of a batch in bytes; 0 is the server's wal_buffers divided by workers", _SWEEP,
              low=0, high=2**50, cell="tuning"),
    Parameter("run_id", str, "", "names this run in its record and the ledger; generated when empty",
              _kinds(Kind.INSPECT, Kind.PREVIEW, Kind.SWEEP, Kind.INDEX), rule=_run_id, option=False),
    Parameter("run_id", str, "",
              "the sweep run to undo, as its record or litellm_runbook.runs shows it; empty lists recent runs",
              _kinds(Kind.UNDO), rule=_run_id, option=False),
    Parameter("undo_run_id", str, "", "names this undo run in its record and the ledger; generated when empty",
              _kinds(Kind.UNDO), rule=_run_id, option=False),
    Parameter("run_id", str, "",
              "a run to show in detail: its batches, its record, what undo would restore now; empty shows none",
              _kinds(Kind.HISTORY), rule=_run_id, option=False),
    Parameter("history_run_id", str, "", "names this history run in its record; generated when empty",
              _kinds(Kind.HISTORY), rule=_run_id, option=False),
)  # fmt: skip


def declared(kind: str) -> dict[str, Parameter]:
    """The parameters of notebook ``kind``, in the order its parameters cell lists them."""
    if kind not in KINDS:
        raise ParameterError("kind", kind, f"one of {list(KINDS)}")
    return {p.name: p for p in PARAMETERS if kind in p.notebooks}


# The generated cells of a notebook, top to bottom: papermill injects its parameters after
# the one tagged parameters, so -p overrides the cells above it too.
CELLS = ("tuning", "health", "parameters")


def cell_source(kind: str, cell: str) -> str:
    """The source of notebook ``kind``'s cell tagged ``cell`` (``CELLS``): its parameters'
    ``name: type = default  # help`` lines; '' when it has none. The ``parameters`` cell
    holds what an operator sets on most runs (what ``papermill --help-notebook`` lists);
    ``tuning`` timeouts, retries, budgets and folders; ``health`` the health throttle."""
    if cell not in CELLS:
        raise ParameterError("cell", cell, f"one of {list(CELLS)}")
    return "\n".join(p.line() for p in declared(kind).values() if p.cell == cell)


def parameters_cell(kind: str) -> str:
    """The source of notebook ``kind``'s ``parameters`` cell (``cell_source``)."""
    return cell_source(kind, "parameters")


def check_names(kind: str, names: Iterable[str]) -> None:
    """ParameterError for the first name that is not a parameter of notebook ``kind``,
    with the closest declared name. The value is never shown: a mistyped name may hold
    anything, a password included."""
    known = declared(kind)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ParameterError(
                name, "<not shown>", f"not a parameter of the {kind} notebook; {hint}its parameters: {', '.join(known)}"
            )


def options(**params: object) -> Options:
    """Check every given parameter and return Options; ParameterError names the first bad one
    (an unknown name included, with the closest known one).

    ``cutoff`` (ISO 8601 UTC, or None/'') replaces ``stale_after_days`` when given; whether
    it is at least a day old is checked against the server's clock when a run reads it.
    """
    by_name = {p.name: p for p in PARAMETERS if p.option}
    values: dict[str, object] = {}
    for name, value in params.items():
        spec = by_name.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ParameterError(name, "<not shown>", f"not a parameter; {hint}known: {', '.join(by_name)}")
        values[name] = spec.check(name, value)
    # LiteLLM clamps MANAGED_OBJECT_STALENESS_CUTOFF_DAYS to at least 1; the rule above
    # refuses instead of silently changing what the operator asked for.
    if values.get("expect_fingerprint") and values.get("cutoff") is None:
        # The fingerprint binds the preview's cutoff; one computed now from stale_after_days
        # never equals it, so the sweep could only refuse later, after connecting.
        raise ParameterError(
            "expect_fingerprint", values["expect_fingerprint"],
            "given together with the preview's fixed cutoff (-p cutoff <the cutoff the preview printed>)",
        )  # fmt: skip
    return Options(**values)  # type: ignore[arg-type]


def check_parameters(kind: str, params: Mapping[str, object]) -> tuple[Options, dict[str, str]]:
    """Everything an operator passed to notebook ``kind``, checked before anything runs:
    no credential (by name or value), only declared names, valid values.

    Returns the Options and the names the run goes by: ``target`` and the run ids
    (``run_id``; for undo also ``undo_run_id``), '' where empty. Raises ParameterError;
    writes nothing."""
    refuse_secrets(params)
    check_names(kind, params)
    spec = declared(kind)
    ids = {name: str(spec[name].check(name, params.get(name, spec[name].default))) for name in spec if not spec[name].option}
    return options(**{k: v for k, v in params.items() if spec[k].option}), ids


# Parts of a parameter *name* that say it holds a credential.
_SECRET_NAMES = (
    "password", "passwd", "pwd", "pass_word", "secret", "token", "pgpass", "api_key", "apikey", "credential",
    "private_key", "access_key", "auth",
)  # fmt: skip
# Parts of a *value* that say it carries one.
_SECRET_MARKERS = ("password", "passwd", "pgpass", "secret", "token=", "api_key", "apikey")


def _carries_secret(value: object, depth: int = 0) -> bool:
    import re

    if depth > 20:  # a structure this deep is not a parameter anyone meant
        return True
    if isinstance(value, str):
        lowered = value.lower()
        return (
            any(m in lowered for m in _SECRET_MARKERS)
            or ("://" in value and "@" in value.split("://", 1)[1])
            or re.search(r"\bsk-[A-Za-z0-9_-]{8,}", value) is not None  # a LiteLLM virtual or master key
        )
    if isinstance(value, Mapping):
        return any(_carries_secret(k, depth + 1) or _carries_secret(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_carries_secret(v, depth + 1) for v in value)
    return False


def refuse_secrets(params: Mapping[str, object]) -> None:
    """ParameterError if a parameter's name or value (searched through lists, tuples, sets
    and dicts, keys included) looks like it carries a credential.

    Papermill writes every parameter into the executed notebook, so credentials must
    come from the environment. The offending value is never echoed.
    """
    for name, value in params.items():
        lowered = str(name).lower()
        if any(marker in lowered for marker in _SECRET_NAMES) or _carries_secret(value):
            raise ParameterError(
                str(name), "<redacted>",
                "no credentials in parameters; set DATABASE_URL or PGPASSWORD in the environment",
            )  # fmt: skip


def _check_declaration() -> None:
    """Import-time guard: every Options field is declared once, with the same default."""
    names = [p.name for p in PARAMETERS if p.option]
    assert len(names) == len(set(names)), "a parameter declared twice"
    fields_ = {f.name: f.default for f in fields(Options)}
    assert set(names) == set(fields_), set(names) ^ set(fields_)
    for p in PARAMETERS:
        if p.option:
            default = None if p.name == "cutoff" else p.default
            assert fields_[p.name] == default, p.name


_check_declaration()
