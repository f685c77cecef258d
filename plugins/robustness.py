"""robustness plugin (being built)."""
