"""Step-level scalars, computed once per step on the host in float64."""
