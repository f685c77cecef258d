"""fairness plugin (being built)."""
