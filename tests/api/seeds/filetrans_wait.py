# The cloud documentation's qwen3-asr-flash-filetrans flow, unchanged: submit, wait, then fetch the
# result document from its URL with a plain GET and no credentials. The file URL and options come from
# the environment (FT_FILE_URL, FT_WORDS, FT_CHANNELS) so one program covers each case. With FT_UPLOAD
# (a local path), the file is uploaded first with the SDK's own upload helper and its oss:// URL is sent.
import json
import os
import urllib.request

from dashscope.audio.qwen_asr import QwenTranscription
from dashscope.utils.oss_utils import OssUtils

file_url = os.environ.get("FT_FILE_URL", "")
if os.environ.get("FT_UPLOAD"):
    uploaded = OssUtils.upload(model="qwen3-asr-flash-filetrans", file_path=os.environ["FT_UPLOAD"])
    file_url = uploaded[0] if isinstance(uploaded, tuple) else uploaded  # 2.x returns (url, certificate)
task = QwenTranscription.async_call(
    model="qwen3-asr-flash-filetrans",
    file_url=file_url,
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
