# Loads the database plugin for every test, notebooks (nbval) included: it starts one
# embedded PostgreSQL per session and exports its DSN before any kernel starts.
pytest_plugins = ["tests.fix_db"]
