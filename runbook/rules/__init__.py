"""Layer 1, the rules: parameters, targets and the states a run can be in. No I/O at all."""
