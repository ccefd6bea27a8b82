"""Live recognition: utterances decoded as they are spoken, at bounded cost (issue 16)."""

from qasr.live.recognizer import Final, LiveConfig, LiveOptions, LiveRecognizer, Partial, Utterance

__all__ = ["Final", "LiveConfig", "LiveOptions", "LiveRecognizer", "Partial", "Utterance"]
