"""Asynchronous file jobs (the cloud's `qwen3-asr-flash-filetrans` API, docs/spec/filetrans.md): the
task store (`store`: a small Protocol, SQLite by default), the runner that transcribes tasks in the
background (`runner`), the result document (`results`) and its signed URLs (`signing`)."""
