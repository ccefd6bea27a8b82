"""qasr.api."""
