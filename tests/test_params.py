"""Every bad parameter is refused with a message naming it, its value and what is allowed."""

from __future__ import annotations

import pytest

from runbook import ParameterError, Target, options
from runbook.rules.params import refuse_secrets


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


def test_defaults_are_the_production_ones_and_safe() -> None:
    o = options()
    assert (o.stale_after_days, o.batch_size, o.dry_run, o.cutoff) == (7.0, 1000, True, None)


def test_cutoff_with_offset_is_converted_to_naive_utc() -> None:
    o = options(cutoff="2020-01-01T05:00:00+05:00")
    assert o.cutoff is not None and o.cutoff.isoformat() == "2020-01-01T00:00:00"


@pytest.mark.parametrize(
    ("field", "value"),
    [("table", 'x"; DROP TABLE y; --'), ("schema", "pub lic"), ("status_column", "stätus"), ("key_column", "")],
)
def test_target_rejects_names_that_are_not_plain_identifiers(field: str, value: str) -> None:
    with pytest.raises(ParameterError, match=f"parameter {field}="):
        Target(**{field: value})  # type: ignore[arg-type]


def test_target_new_status_must_be_terminal() -> None:
    with pytest.raises(ParameterError, match="new_status='swept' is not allowed: one of terminal_statuses"):
        Target(new_status="swept")


@pytest.mark.parametrize(
    "value", ["postgresql://litellm:hunter2@db:5432/litellm", "host=db password=hunter2", "PGPASSWORD=x"]
)
def test_credentials_in_parameters_are_refused_without_echo(value: str) -> None:
    with pytest.raises(ParameterError) as err:
        refuse_secrets({"cutoff": value})
    assert "hunter2" not in str(err.value) and "<redacted>" in str(err.value)


def test_batch_size_halves_after_a_slow_batch_and_grows_back() -> None:
    from runbook.rules.pacing import next_batch_size

    opts = options(batch_size=1000, target_batch_ms=100)
    assert next_batch_size(opts, 1000, 1000, 0.09) == 1000  # on target: unchanged
    assert next_batch_size(opts, 1000, 1000, 0.26) == 500  # a checkpoint's page images: halve
    assert next_batch_size(opts, 500, 500, 0.12) == 500  # still slow per row: stay
    assert next_batch_size(opts, 500, 500, 0.045) == 1000  # cheap again: back to batch_size, never above
    assert next_batch_size(opts, 60, 60, 10.0) == 50  # never below 50 rows
    assert next_batch_size(options(batch_size=1000, target_batch_ms=0), 1000, 1000, 5.0) == 1000  # 0: fixed


def test_batch_size_fits_the_wal_budget_and_grows_back_slowly() -> None:
    from runbook.rules.pacing import next_batch_size

    opts = options(batch_size=1000)
    mb = 1 << 20
    assert next_batch_size(opts, 1000, 1000, 0.08, 4 * mb, 8 * mb) == 1000  # within budget: batch_size
    assert next_batch_size(opts, 1000, 1000, 0.2, 18 * mb, 8 * mb) == 444  # 18 KB a row: 8 MB fits 444
    assert next_batch_size(opts, 444, 444, 0.04, 1 * mb, 8 * mb) == 466  # cheap again: grows back 5% a batch
    assert next_batch_size(opts, 990, 990, 0.04, 1 * mb, 8 * mb) == 1000  # never above batch_size
    assert next_batch_size(opts, 100, 100, 0.5, 100 * mb, 8 * mb) == 50  # never below 50 rows
    assert next_batch_size(options(batch_size=20), 20, 20, 0.5, 100 * mb, 8 * mb) == 20  # nor below a smaller batch_size
    assert next_batch_size(opts, 1000, 1000, 0.2, 18 * mb, 0) == 1000  # no budget: fixed
    assert next_batch_size(options(batch_size=1000, target_batch_ms=100), 1000, 1000, 0.26, 4 * mb, 8 * mb) == 500  # slower limit wins
