# The cloud documentation's realtime recognition client (qwen3-asr-flash-realtime), run unchanged but
# for `url=` and a few settings read from the environment by the test that runs it. It prints every
# server event as one JSON line. dashscope 2.0.2 configures recognition with TranscriptionParams and
# ends with end_session(); 1.24.6 has neither, so the same settings go in as keyword arguments and
# session.finish is sent raw.
import base64
import json
import os
import sys
import threading
import time
import wave

import dashscope
from dashscope.audio.qwen_omni import MultiModality, OmniRealtimeCallback, OmniRealtimeConversation

dashscope.api_key = os.environ["DASHSCOPE_API_KEY"]
URL = os.environ["QASR_REALTIME_URL"]
AUDIO = os.environ["QASR_AUDIO"]  # a 16-bit mono wav at 16 or 8 kHz
MODE = os.environ.get("QASR_MODE", "vad")  # vad | manual
LANGUAGE = os.environ.get("QASR_LANGUAGE") or None
CONTEXT = os.environ.get("QASR_CONTEXT") or None
COMMIT_EVERY_S = float(os.environ.get("QASR_COMMIT_EVERY_S", "0"))  # manual mode: commit this often
FINISH = os.environ.get("QASR_FINISH", "yes") == "yes"  # no: just disconnect at the end
PACE_S = float(os.environ.get("QASR_PACE_S", "0.005"))  # pause after each 100 ms append
WAIT_TEXT = os.environ.get("QASR_WAIT_TEXT") == "yes"  # manual mode: wait for an interim result first
finished = threading.Event()
interim = threading.Event()


class Callback(OmniRealtimeCallback):
    def on_open(self):
        print(json.dumps({"type": "<open>"}), flush=True)

    def on_close(self, code, msg):
        print(json.dumps({"type": "<close>", "code": code}), flush=True)
        finished.set()

    def on_event(self, response):
        print(json.dumps(response, ensure_ascii=False), flush=True)
        if response.get("type") == "session.finished":
            finished.set()
        if response.get("type") == "conversation.item.input_audio_transcription.text":
            interim.set()


with wave.open(AUDIO, "rb") as f:
    rate = f.getframerate()
    pcm = f.readframes(f.getnframes())

conversation = OmniRealtimeConversation(model="qwen3-asr-flash-realtime", url=URL, callback=Callback())
conversation.connect()
settings = dict(
    output_modalities=[MultiModality.TEXT],
    enable_input_audio_transcription=True,
    enable_turn_detection=MODE == "vad",
    turn_detection_type="server_vad",
    turn_detection_threshold=0.2,
    turn_detection_silence_duration_ms=800,
)
try:
    from dashscope.audio.qwen_omni.omni_realtime import TranscriptionParams

    params = TranscriptionParams(
        language=LANGUAGE, sample_rate=rate, input_audio_format="pcm", corpus_text=CONTEXT
    )
    conversation.update_session(transcription_params=params, **settings)
except ImportError:  # dashscope 1.24.6
    transcription = {"language": LANGUAGE} if LANGUAGE else {}
    if CONTEXT:
        transcription["corpus"] = {"text": CONTEXT}
    conversation.update_session(
        voice=None,
        input_audio_transcription=transcription,
        sample_rate=rate,
        **settings,
    )

chunk = rate * 2 // 10  # 100 ms per append, as in the cloud's sample (3200 bytes at 16 kHz)
sent_since_commit = 0
for start in range(0, len(pcm), chunk):
    conversation.append_audio(base64.b64encode(pcm[start : start + chunk]).decode())
    sent_since_commit += chunk // 2
    if MODE == "manual" and COMMIT_EVERY_S and sent_since_commit >= COMMIT_EVERY_S * rate:
        if WAIT_TEXT and not interim.wait(60):
            sys.exit("no interim result")
        interim.clear()
        conversation.commit()
        sent_since_commit = 0
    time.sleep(PACE_S)
if MODE == "manual" and sent_since_commit and COMMIT_EVERY_S:
    if WAIT_TEXT and not interim.wait(60):
        sys.exit("no interim result")
    conversation.commit()
if not FINISH:
    conversation.close()
    sys.exit(0)
if hasattr(conversation, "end_session"):
    conversation.end_session(timeout=120)
else:
    conversation.send_raw(json.dumps({"event_id": "event_finish", "type": "session.finish"}))
    if not finished.wait(120):
        sys.exit("no session.finished")
time.sleep(0.5)
