"""Layer 2, the SQL: every statement the runbook runs, built with ``psycopg.sql`` and never
executed here, so a preview can show exactly what a sweep will run. One module per concern:
``candidates`` (the rule, the batches), ``undo``, ``ledger``, ``catalog`` (checks, clock,
locks, health), ``index``, ``grants`` and ``demo``."""
