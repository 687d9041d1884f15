"""Property-based: no parameter value can change the SQL's shape or slip past validation."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from runbook import ParameterError, Target, options
from runbook.rules.params import refuse_secrets
from runbook.sql import candidates, undo

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
FIELDS = ("table", "schema", "key_column", "time_column", "status_column", "purpose_column")
hostile_text = st.one_of(
    st.text(max_size=80),
    st.sampled_from(['x"; DROP TABLE t; --', "a b", "ümlaut", "t'or'1'='1", "x;y", '"', "", "1abc", "a" * 64]),
    st.from_regex(IDENTIFIER, fullmatch=True),
)


def rendered(target: Target) -> list[str]:
    stmts = [
        candidates.next_batch(target), candidates.candidate_count(target), candidates.breakdown(target),
        candidates.batch_update(target), undo.undo_update(target), *candidates.snapshot(target),
    ]  # fmt: skip
    return [s.as_string(None) for s in stmts]


DEFAULT = Target()
BASELINE = rendered(DEFAULT)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(FIELDS), value=hostile_text)
def test_identifiers_are_plain_names_or_refused_and_never_change_the_shape(field: str, value: str) -> None:
    try:
        target = Target(**{field: value})  # type: ignore[arg-type]
    except ParameterError as err:
        assert err.name == field and not IDENTIFIER.match(value)
        return
    assert IDENTIFIER.match(value)
    default_name = getattr(DEFAULT, field)
    # Swap the name back: what remains must be the default SQL, character for character.
    restored = [s.replace(f'"{value}"', f'"{default_name}"') for s in rendered(target)]
    # (A name the SQL already uses elsewhere, an alias or pg_temp, cannot be swapped back blindly.)
    if f'"{value}"' not in "".join(BASELINE) and not re.search(rf"\b{value}\b", "".join(BASELINE)):
        assert restored == BASELINE


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(("purpose", "new_status")), value=hostile_text)
def test_status_values_are_bound_never_rendered(field: str, value: str) -> None:
    try:
        target = Target(**{field: value}) if field == "purpose" else Target(new_status=value, terminal_statuses=(value,))
    except ParameterError as err:
        assert err.name == field
        return
    assert rendered(target) == BASELINE


numbers = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(("batch_size", "max_batches", "max_seconds", "stale_after_days", "max_rows", "dry_run", "cutoff", "lock_timeout_s")), value=numbers)
def test_every_parameter_is_valid_or_a_named_parameter_error(name: str, value: object) -> None:
    try:
        opts = options(**{name: value})
    except ParameterError as err:
        assert err.name == name and str(err).startswith(f"parameter {name}=")
        return
    if name in ("batch_size", "max_batches", "max_rows"):
        assert type(value) is int and 1 <= getattr(opts, name) <= 10**9
    elif name == "dry_run":
        assert type(value) is bool
    elif name == "cutoff":
        assert value in (None, "")
    else:
        assert isinstance(value, (int, float)) and not isinstance(value, bool)


@given(prefix=st.text(max_size=20), suffix=st.text(max_size=20), marker=st.sampled_from(["password=", "PASSWORD", "://u:p@h"]))
def test_any_parameter_carrying_a_password_is_refused_without_echo(prefix: str, suffix: str, marker: str) -> None:
    value = prefix + marker + suffix
    try:
        refuse_secrets({"cutoff": value})
    except ParameterError as err:
        # The message is the same whatever the value: nothing of it is echoed.
        assert str(err) == (
            "parameter cutoff='<redacted>' is not allowed: no credentials in parameters; "
            "set DATABASE_URL or PGPASSWORD in the environment"
        )
        return
    raise AssertionError("a credential-bearing parameter was accepted")
