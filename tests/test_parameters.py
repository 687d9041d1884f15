"""Parameters: one declaration for each, every bad value refused by name with what is allowed,
and the careless operator: typos, credentials, relative paths, absurd numbers, a cutoff judged by
the wrong clock, a run started from JupyterLab.

Beyond the plain value checks, the tests run the real thing (the runner, plain papermill, the
kernel's start()) against the PostgreSQL the session started.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

import runbook.notebook.run as rb
from runbook import ParameterError, options
from runbook.audit.record import read_record
from runbook.notebook.cells import NOTEBOOKS, stale_cells
from runbook.ops.preview import preview
from runbook.ops.sweep import sweep
from runbook.rules.params import CELLS, PARAMETERS, cell_source, declared, refuse_secrets
from runbook.rules.target import Target
from runbook.tools.runner import NOTEBOOK_DIR, execute
from tests.rows import db_now, insert, state, statuses

ROOT = NOTEBOOK_DIR.parent
README = (ROOT / "README.md").read_text()


def _env(dsn: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": dsn, **extra}


def _runbook(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runbook", "run", *args], env=env, capture_output=True, text=True, cwd=cwd, timeout=180
    )


def _papermill(notebook: str, out: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "papermill", str(NOTEBOOK_DIR / notebook), str(out), *args, "--no-progress-bar"],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=180,
    )  # fmt: skip


# -- every bad value is named with what is allowed ---------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("batch_size", 0, "an integer from 1 to 100_000"),
        ("batch_size", -1, "an integer from 1 to 100_000"),
        ("batch_size", "abc", "an integer from 1 to 100_000"),
        ("batch_size", 10**9, "an integer from 1 to 100_000"),
        ("batch_size", 2.5, "an integer from 1 to 100_000"),
        ("batch_size", True, "an integer from 1 to 100_000"),
        ("stale_after_days", 0, "a number of days from 1 to 3650"),
        ("stale_after_days", 0.5, "a number of days from 1 to 3650"),
        ("stale_after_days", float("nan"), "a number of days from 1 to 3650"),
        ("stale_after_days", "7", "a number of days from 1 to 3650"),
        ("max_batches", 0, "an integer from 1 to 1_000_000"),
        ("max_seconds", -5, "a number of seconds from 1 to 604800"),
        ("dry_run", "False", "True or False"),
        ("dry_run", 0, "True or False"),
        ("cutoff", "yesterday", "an ISO 8601 UTC timestamp"),
        ("cutoff", "2026-13-01T00:00:00Z", "an ISO 8601 UTC timestamp"),
    ],
)
def test_bad_parameter_is_named_with_value_and_rule(name: str, value: object, allowed: str) -> None:
    with pytest.raises(ParameterError) as err:
        options(**{name: value})
    assert err.value.name == name
    assert str(err.value).startswith(f"parameter {name}={value!r} is not allowed: ")
    assert allowed in str(err.value)


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        ("batch_size", "0", "parameter batch_size=0 is not allowed"),
        ("batch_size", "-1", "parameter batch_size=-1 is not allowed"),
        ("batch_size", "abc", "parameter batch_size='abc' is not allowed"),
        ("batch_size", "1000000000", "parameter batch_size=1000000000 is not allowed"),
        ("stale_after_days", "0", "parameter stale_after_days=0 is not allowed"),
    ],
)
def test_papermill_cli_refuses_bad_parameters_before_writing(
    conn: psycopg.Connection, dsn: str, tmp_path: Path, param: str, value: str, message: str
) -> None:
    for i in range(3):
        insert(conn, status="queued", age_days=10 + i)
    before = state(conn)
    out = tmp_path / "out.ipynb"
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(NOTEBOOK_DIR / "03_sweep.ipynb"), str(out),
         "-p", param, value, "-p", "dry_run", "False", "--no-progress-bar"],
        env=_env(dsn), capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert message in done.stderr
    assert state(conn) == before
    assert out.exists(), "papermill leaves the failed notebook behind"
    record = read_record(out)
    assert record is None  # validation fails before start() returns: no run, nothing recorded as done


def test_defaults_are_the_production_ones_and_safe() -> None:
    o = options()
    assert (o.stale_after_days, o.batch_size, o.dry_run, o.cutoff) == (7.0, 1000, True, None)


def test_cutoff_with_offset_is_converted_to_naive_utc() -> None:
    o = options(cutoff="2020-01-01T05:00:00+05:00")
    assert o.cutoff is not None and o.cutoff.isoformat() == "2020-01-01T00:00:00"


@pytest.mark.parametrize(
    "value", ["postgresql://litellm:hunter2@db:5432/litellm", "host=db password=hunter2", "PGPASSWORD=x"]
)
def test_credentials_in_parameters_are_refused_without_echo(value: str) -> None:
    with pytest.raises(ParameterError) as err:
        refuse_secrets({"cutoff": value})
    assert "hunter2" not in str(err.value) and "<redacted>" in str(err.value)


# -- one declaration ---------------------------------------------------------------------


def test_every_notebook_parameters_cell_is_generated_from_the_declaration() -> None:
    assert stale_cells() == [], "run: python -m runbook notebooks --write"
    for kind in NOTEBOOKS:
        # `papermill --help-notebook` breaks on a help text holding '='.
        assert all("=" not in p.help for p in declared(kind).values())
        cells = [cell_source(kind, cell) for cell in CELLS]
        assert sum(len(c.splitlines()) for c in cells) == len(declared(kind))
        assert all(len(c.splitlines()) <= 12 for c in cells), "a notebook's cells stay short"


def test_every_knob_the_readme_documents_is_a_declared_sweep_parameter_and_back() -> None:
    tables = README[README.index("## Operator controls") : README.index("## Speed")]
    tables += README[README.index("## When the database is unhealthy") : README.index("Faults and what they leave")]
    documented = set(re.findall(r"^\| `([a-z_]+)`", tables, re.M))
    documented |= {n for row in re.findall(r"^\| `[a-z_]+`, (.*?) \|", tables, re.M) for n in re.findall(r"`([a-z_]+)`", row)}
    documented |= set(re.findall(r"^\| [^|]+ \| `([a-z_]+)` \|", tables, re.M))
    sweep_names = set(declared("sweep")) - {"run_id"}
    assert documented - sweep_names == set(), "documented but not declared (so silently ignored)"
    assert sweep_names - documented == set(), "declared but not documented"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("target_batch_ms", 250.0), ("max_batch_wal_bytes", 1 << 20), ("max_replication_lag_bytes", 1 << 30),
        ("max_lock_waiters", 3), ("pause_during_vacuum", False), ("health_pause_s", 0.5), ("lock_timeout_s", 2.0),
        ("statement_timeout_s", 30.0), ("max_retries", 1), ("pause_s", 0.01), ("allow_blind_health", True),
    ],
)  # fmt: skip
def test_every_documented_sweep_knob_reaches_the_run(name: str, value: object, dsn: str, tmp_path: Path) -> None:
    done = execute("sweep", {name: value, "run_id": f"knob-{name.replace('_', '-')}"}, tmp_path, env=_env(dsn))
    assert done.ok, done.error
    assert done.record is not None
    assert done.record["options"][name] == value
    assert done.record["outcome"]["sweep"]["options"][name] == value


# -- unknown names -----------------------------------------------------------------------


def test_runner_refuses_a_mistyped_name_before_anything_is_written(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    for i in range(3):
        insert(conn, status="queued", age_days=10 + i)
    before = state(conn)
    runs = tmp_path / "runs"
    done = _runbook(["sweep", "-p", "dry_run", "False", "-p", "max_batch", "1", "--run-dir", str(runs)], _env(dsn), ROOT)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        "error: parameter max_batch='<not shown>' is not allowed: not a parameter of the sweep notebook; "
        f"did you mean max_batches? its parameters: {', '.join(declared('sweep'))}"
    )
    assert state(conn) == before
    assert not runs.exists(), "nothing written, not even the notebook"
    with pytest.raises(ParameterError, match="not a parameter of the inspect notebook; did you mean batch_size"):
        execute("inspect", {"batch_sise": 10}, runs, env=_env(dsn))
    with pytest.raises(ParameterError, match="not a parameter of the inspect notebook"):
        execute("inspect", {"max_batches": 10}, runs, env=_env(dsn))  # a sweep parameter is not inspect's
    assert not runs.exists()


@pytest.mark.parametrize(
    ("name", "hint"),
    [("max_batch", "did you mean max_batches?"), ("batch", "did you mean batch_size?"), ("_batch_size", "did you mean batch_size?"),
     ("record", "its parameters:")],
)  # fmt: skip
def test_plain_papermill_with_a_mistyped_name_fails_before_the_first_query(name: str, hint: str, dsn: str, tmp_path: Path) -> None:
    # A database that does not exist: if start() connected before checking names, the
    # error would be "cannot connect", not the parameter.
    nowhere = conninfo.make_conninfo(dsn, dbname="no_such_database")
    out = tmp_path / "out.ipynb"
    done = _papermill("03_sweep.ipynb", out, ["-p", "dry_run", "False", "-p", name, "1"], _env(nowhere))
    assert done.returncode != 0
    assert f"parameter {name}='<not shown>' is not allowed: not a parameter of the sweep notebook; {hint}" in done.stderr
    assert "cannot connect" not in done.stderr
    assert out.exists(), "papermill leaves the failed notebook behind"


# -- credentials -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"password": "hunter2"}, {"PGPASSWORD": "hunter2"}, {"db_passwd": "hunter2"}, {"api_key": "hunter2"},
        {"litellm_master_token": "hunter2"}, {"secret": 1},
        {"cutoff": ["postgresql://admin:hunter2@db/litellm"]},
        {"metrics_dir": {"nested": ("x", "host=db password=hunter2")}},
        {"stop_file": {"postgresql://admin:hunter2@db/x": 1}},
        {"run_id": "sk-1234567890abcdefhunter2"},
    ],
)  # fmt: skip
def test_credentials_are_refused_by_name_and_value_at_any_depth_without_echo(params: dict[str, object], tmp_path: Path, dsn: str) -> None:
    with pytest.raises(ParameterError) as err:
        refuse_secrets(params)
    name = next(iter(params))
    assert str(err.value) == (
        f"parameter {name}='<redacted>' is not allowed: no credentials in parameters; "
        "set DATABASE_URL or PGPASSWORD in the environment"
    )
    with pytest.raises(ParameterError, match="no credentials in parameters"):
        execute("sweep", params, tmp_path / "runs", env=_env(dsn))
    assert not (tmp_path / "runs").exists()


def test_runner_cli_refuses_a_password_parameter_and_never_shows_it(dsn: str, tmp_path: Path) -> None:
    done = _runbook(["sweep", "-p", "PGPASSWORD", "hunter2", "--run-dir", str(tmp_path / "runs")], _env(dsn), ROOT)
    assert done.returncode == 2
    assert "hunter2" not in done.stdout + done.stderr
    assert "parameter PGPASSWORD='<redacted>' is not allowed: no credentials in parameters" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_plain_papermill_password_parameter_stops_the_kernel_without_echo(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "out.ipynb"
    done = _papermill("01_inspect.ipynb", out, ["-p", "password", "hunter2"], _env(dsn))
    assert done.returncode != 0
    assert "parameter password='<redacted>' is not allowed: no credentials in parameters" in done.stderr
    errors = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert len(errors) == 1 and "hunter2" not in json.dumps(errors)


def test_run_cli_refuses_a_password_before_anything_is_written(tmp_path: Path, dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runbook", "run", "sweep", "-r", "cutoff", "postgresql://admin:hunter2@db/litellm", "--run-dir", str(tmp_path)],
        env=_env(dsn), capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "hunter2" not in done.stdout + done.stderr
    assert "no credentials in parameters" in done.stderr
    assert list(tmp_path.iterdir()) == []


# -- relative paths ----------------------------------------------------------------------


def test_relative_stop_file_is_the_operators_not_the_kernels(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    for i in range(4):
        insert(conn, status="queued", age_days=10 + i)
    before = state(conn)
    (tmp_path / "STOP").touch()
    done = _runbook(
        ["sweep", "-p", "dry_run", "False", "-p", "batch_size", "1", "-r", "stop_file", "STOP", "-r", "metrics_dir", "prom",
         "-p", "run_id", "t-relative", "--run-dir", "runs"],
        _env(dsn), tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (executed,) = (tmp_path / "runs").glob("*_03_sweep_t-relative.ipynb")
    record = read_record(executed)
    assert record is not None
    sweep_out = record["outcome"]["sweep"]
    assert sweep_out["stop_reason"] == "stop_file" and sweep_out["changed"] == 0
    assert record["options"]["stop_file"] == str(tmp_path / "STOP")
    assert record["options"]["metrics_dir"] == str(tmp_path / "prom")
    assert (tmp_path / "prom" / "litellm_runbook_t-relative.prom").exists()
    assert state(conn) == before


# -- numbers and clocks ------------------------------------------------------------------


def test_an_absurdly_large_number_is_a_parameter_error_not_a_crash(dsn: str, tmp_path: Path) -> None:
    with pytest.raises(ParameterError) as err:
        options(stale_after_days=10**400)
    assert err.value.name == "stale_after_days" and "a number of days from 1 to 3650" in str(err.value)
    assert len(str(err.value)) < 200
    done = _runbook(["inspect", "-p", "stale_after_days", "1" + "0" * 400, "--run-dir", str(tmp_path)], _env(dsn), ROOT)
    assert done.returncode == 2
    assert "error: parameter stale_after_days=" in done.stderr and "a number of days from 1 to 3650" in done.stderr
    assert "OverflowError" not in done.stderr


def test_a_fixed_cutoff_is_judged_by_the_servers_clock(conn: psycopg.Connection) -> None:
    stale = insert(conn, status="queued", age_days=3)
    before = state(conn)
    server_now = db_now(conn)
    recent = (server_now - timedelta(hours=12)).isoformat() + "Z"
    # Not the client's call: options() checks the format only.
    opts = options(cutoff=recent, dry_run=False)
    with pytest.raises(ParameterError) as err:
        preview(conn, Target(), opts)
    assert err.value.name == "cutoff" and "at least 1 day before the database server's clock" in str(err.value)
    with pytest.raises(ParameterError, match="database server's clock"):
        sweep(conn, Target(), opts, run_id="t-cutoff")
    assert state(conn) == before
    old_enough = options(cutoff=(server_now - timedelta(days=2)).isoformat() + "Z", dry_run=False)
    assert [r.id for r in preview(conn, Target(), old_enough).rows] == [stale]


# -- JupyterLab vs the command line ------------------------------------------------------


def test_a_command_line_run_from_a_jupyterlab_terminal_is_not_turned_into_a_dry_run(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(3)]
    env = _env(dsn, JPY_SESSION_NAME="/home/oncall/scratch.ipynb")  # inherited by `!python -m runbook run ...`
    done = execute("sweep", {"dry_run": False, "run_id": "t-from-lab"}, tmp_path, env=env)
    assert done.ok, done.error
    assert done.record is not None and done.record["outcome"]["sweep"]["dry_run"] is False
    assert "forced_dry_run" not in done.record["outcome"]
    assert statuses(conn) == {i: "stale_expired" for i in ids}


def test_a_live_sweep_asked_of_a_jupyterlab_cell_is_refused_not_turned_into_a_dry_run(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    insert(conn, status="queued", age_days=10)
    before = state(conn)
    # Plain papermill run from a JupyterLab cell or terminal inherits JPY_SESSION_NAME.
    out = tmp_path / "out.ipynb"
    env = _env(dsn, JPY_SESSION_NAME="/home/oncall/scratch.ipynb")
    done = _papermill("03_sweep.ipynb", out, ["-p", "dry_run", "False", "-p", "run_id", "t-lab-cell"], env)
    assert done.returncode != 0
    assert "parameter dry_run=False is not allowed: True in a JupyterLab cell: the live sweep runs from the panel" in done.stderr
    assert state(conn) == before
    record = read_record(out)
    assert record is not None and record["outcome"]["status"] == "failed" and record["outcome"]["step"] == "sweep"


def test_every_option_is_declared_once_with_its_default() -> None:
    from dataclasses import fields

    from runbook.rules.params import Options

    declared_options = {p.name: p.default for p in PARAMETERS if p.option}
    assert set(declared_options) == {f.name for f in fields(Options)}
    assert options() == Options()


def test_a_fingerprint_without_the_previews_cutoff_is_refused_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(ParameterError) as err:
        execute("sweep", {"expect_fingerprint": "0123456789abcdef", "dry_run": False}, tmp_path / "runs")
    assert err.value.name == "expect_fingerprint" and "the preview's fixed cutoff" in str(err.value)
    assert not (tmp_path / "runs").exists()
    assert options(expect_fingerprint="0123456789abcdef", cutoff="2020-01-01T00:00:00Z").expect_fingerprint == "0123456789abcdef"


def test_a_run_id_always_arrives_whole_in_the_sessions_application_name(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", dsn)
    longest = "r" * 35 + "9"
    for kind in ("inspect", "preview", "sweep", "index"):  # 'preview' is the longest kind
        run = rb.start(kind, run_id=longest)
        try:
            row = run.conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
        finally:
            run.conn.close()
        assert row is not None and row[0].split("/")[2] == longest
    with pytest.raises(ParameterError, match="1-36 letters"):
        rb.start("inspect", run_id=longest + "x")
