"""qasr.api.openai."""
