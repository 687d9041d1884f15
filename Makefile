# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lab venv typecheck clean db-stop

demo: venv  ## embedded DB + demo data + the three notebooks, executed into runs/
	$(PY) -m runbook demo

test: venv  ## type check, then every test (unit, PostgreSQL, papermill, nbval)
	$(PY) -m mypy
	$(PY) -m pytest

lab: venv  ## JupyterLab on the demo database, in a new session folder under runs/
	$(PY) -m runbook lab --demo

venv: $(VENV)/.installed

# uv installs the set in seconds; plain pip is the fallback when uv cannot be had.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv \
	  && $(VENV)/bin/uv pip install --python $(PY) -q -e ".[test]" \
	  || $(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

typecheck: venv
	$(PY) -m mypy

db-stop: venv
	$(PY) -m runbook db stop

clean:
	-$(PY) -m runbook db destroy
	rm -rf $(VENV) runs .pytest_cache .mypy_cache
