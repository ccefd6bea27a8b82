"""qasr.text."""
