"""Layer 5, the operations: inspect, preview, sweep, undo and create_index, and the
frame every writing run shares (checks, lock, stops, rounds of batches)."""
