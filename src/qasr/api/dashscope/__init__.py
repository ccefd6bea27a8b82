"""qasr.api.dashscope."""
