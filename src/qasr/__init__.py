"""qasr: self-hosted Qwen3-ASR speech recognition with the DashScope and OpenAI APIs."""

__version__ = "0.1.0"
