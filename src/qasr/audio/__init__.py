"""qasr.audio."""
