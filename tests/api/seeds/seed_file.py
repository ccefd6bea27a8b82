# The cloud documentation's local-file call; users replace ABSOLUTE_PATH with their directory.
import os

import dashscope

audio_file_path = "file://ABSOLUTE_PATH/welcome.mp3"

messages = [
    {"role": "system", "content": [{"text": ""}]},
    {"role": "user", "content": [{"audio": audio_file_path}]},
]
response = dashscope.MultiModalConversation.call(
    api_key=os.getenv("DASHSCOPE_API_KEY"),
    model="qwen3-asr-flash",
    messages=messages,
    result_format="message",
    asr_options={"enable_lid": True, "enable_itn": False},
)
print(response)
