# The cloud documentation's qwen3-asr-flash-filetrans flow, unchanged: submit, wait, then fetch the
# result document from its URL with a plain GET and no credentials. The file URL and options come from
# the environment (FT_FILE_URL, FT_WORDS, FT_CHANNELS) so one program covers each case.
import json
import os
import urllib.request

from dashscope.audio.qwen_asr import QwenTranscription

task = QwenTranscription.async_call(
    model="qwen3-asr-flash-filetrans",
    file_url=os.environ["FT_FILE_URL"],
    enable_itn=False,
    enable_words=os.environ.get("FT_WORDS") == "1",
    channel_id=json.loads(os.environ.get("FT_CHANNELS", "[0]")),
)
out = {"submit": {"status_code": task.status_code, "output": dict(task.output or {})}}
if task.status_code == 200:
    result = QwenTranscription.wait(task=task.output.task_id)
    out["wait"] = {"status_code": result.status_code, "output": dict(result.output), "usage": result.usage}
    url = (result.output.get("result") or {}).get("transcription_url")
    if url:
        with urllib.request.urlopen(url) as response:  # no Authorization header
            out["document"] = json.loads(response.read())
else:
    out["submit"].update(code=task.code, message=task.message)
print(json.dumps(out, default=dict))
