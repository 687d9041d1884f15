"""Layer 2, the SQL: every statement the runbook runs, built with ``psycopg.sql`` and never
executed here, so a preview can show exactly what a sweep will run."""
