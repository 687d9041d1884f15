"""Layer 4, the audit trail: who ran what (the run record), metrics files while a run goes
on, and the sealing of executed notebooks against the ledger."""
