"""privacy plugin (being built)."""
