# Cancel, fetch and list with the SDK's inherited task calls, unchanged.
import json
import os

from dashscope.audio.qwen_asr import QwenTranscription

task = QwenTranscription.async_call(model="qwen3-asr-flash-filetrans", file_url=os.environ["FT_FILE_URL"])
task_id = task.output.task_id
cancelled = QwenTranscription.cancel(task_id)
fetched = QwenTranscription.fetch(task=task_id)
waited = QwenTranscription.wait(task=task_id)
listed = QwenTranscription.list(page_size=100)
print(
    json.dumps(
        {
            "task_id": task_id,
            "cancel": {"status_code": cancelled.status_code, "output": cancelled.output},
            "fetch": {"status_code": fetched.status_code, "output": dict(fetched.output)},
            "wait": {"status_code": waited.status_code, "output": dict(waited.output)},
            "list": {"status_code": listed.status_code, "output": listed.output},
        },
        default=dict,
    )
)
