"""qasr.engine."""
