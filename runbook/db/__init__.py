"""Layer 3, database access: connections, transactions, the target lock, health signals,
the ledger and the helper connections of a sweep. Runs the SQL layer's statements."""
