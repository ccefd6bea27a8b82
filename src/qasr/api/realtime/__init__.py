"""The cloud's realtime recognition API (`qwen3-asr-flash-realtime` over WebSocket, issue 16)."""
