"""Decoding every container/codec we promise, the 16 kHz mono float32 output, and every failure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qasr.audio.decode import AudioStream, decode_audio, decode_audio_async, format_bytes, format_duration
from qasr.errors import (
    AudioDecodeError,
    AudioTooLarge,
    AudioTooLong,
    EmptyAudio,
    ForbiddenSource,
    NoAudioStream,
    SourceError,
)
from qasr.types import SAMPLE_RATE, AudioInfo, AudioLimits
from tests.audio.fixtures import (
    Clip,
    encode,
    encode_silence,
    encode_tone,
    peak_hz,
    png_image,
    rms,
    scramble_adts,
    silent_wav,
    tone,
    video_only_mp4,
    wav_header,
)

MP4 = "mov,mp4,m4a,3gp,3g2,mj2"
MKV = "matroska,webm"

# name -> (clip, FFmpeg's container name, FFmpeg's codec name). Rates and channel counts vary on purpose.
FORMATS: dict[str, tuple[Clip, str, str]] = {
    "wav": (Clip("wav", "pcm_s16le"), "wav", "pcm_s16le"),
    "mp3": (Clip("mp3", "libmp3lame", rate=22_050, channels=2), "mp3", "mp3"),
    "m4a-aac": (Clip("ipod", "aac"), MP4, "aac"),
    "aac-adts": (Clip("adts", "aac", rate=48_000, channels=2), "aac", "aac"),
    "flac": (Clip("flac", "flac", rate=11_025), "flac", "flac"),
    "ogg-vorbis": (Clip("ogg", "vorbis", channels=2), "ogg", "vorbis"),
    "ogg-opus": (Clip("ogg", "libopus", rate=48_000), "ogg", "opus"),
    "webm-opus": (Clip("webm", "libopus", rate=48_000, channels=2), MKV, "opus"),
    "amr-nb": (Clip("amr", "libopencore_amrnb", rate=8_000), "amr", "amr_nb"),
    "aiff": (Clip("aiff", "pcm_s16be", rate=22_050, channels=2), "aiff", "pcm_s16be"),
    "wma": (Clip("asf", "wmav2", bit_rate=64_000), "asf", "wmav2"),
    "webm-video": (Clip("webm", "libopus", rate=48_000, video="libvpx"), MKV, "opus"),
    "mp4-video": (Clip("mp4", "aac", video="libx264"), MP4, "aac"),
    "mkv-video": (Clip("matroska", "libmp3lame", rate=48_000, channels=2, video="mpeg4"), MKV, "mp3"),
    "avi-video": (Clip("avi", "libmp3lame", video="mpeg4"), "avi", "mp3"),
    "flv-video": (Clip("flv", "aac", rate=22_050, video="flv"), "flv", "aac"),
    "wmv-video": (
        Clip("asf", "wmav2", rate=22_050, channels=2, bit_rate=64_000, video="wmv2"),
        "asf",
        "wmav2",
    ),
    "mov-video": (Clip("mov", "aac", rate=48_000, video="mjpeg"), MP4, "aac"),
}

LOSSY_PADDING_S = 0.08
"""Lossy encoders add priming and pad the last frame (AAC at 22.05 kHz: about 70 ms)."""


def wav(samples: np.ndarray, rate: int) -> bytes:
    return encode(samples, rate, Clip("wav", "pcm_s16le", rate=rate, channels=samples.shape[0]))


# --- what decodes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_decodes_each_format_to_16k_mono_float32(name: str) -> None:
    clip, container, codec = FORMATS[name]
    audio = decode_audio(encode_tone(clip, seconds=1.0, freq_hz=440.0))

    assert audio.samples.dtype == np.float32
    assert audio.samples.ndim == 1
    assert audio.info == AudioInfo(
        duration_s=audio.duration_s,
        container=container,
        codec=codec,
        sample_rate=clip.rate,
        channels=clip.channels,
    )
    assert 1.0 - 0.03 <= audio.duration_s <= 1.0 + LOSSY_PADDING_S
    assert peak_hz(audio.samples, SAMPLE_RATE) == pytest.approx(440.0, abs=5.0)
    # Channels are averaged (levels 1.0 and 0.5 give 0.75), not summed at -3 dB (which would give 1.06).
    expected_rms = 0.5 * (1.0 if clip.channels == 1 else 0.75) / np.sqrt(2)
    assert 0.8 * expected_rms < rms(audio.samples) < 1.1 * expected_rms
    assert np.abs(audio.samples).max() <= 1.0


@pytest.mark.parametrize(
    ("rate", "channels"), [(8_000, 1), (11_025, 1), (22_050, 1), (44_100, 2), (48_000, 2)]
)
def test_resamples_any_rate_keeping_length_pitch_and_level(rate: int, channels: int) -> None:
    audio = decode_audio(wav(tone(440.0, 1.0, rate, channels), rate))

    assert len(audio.samples) == pytest.approx(SAMPLE_RATE, abs=2)
    assert (audio.info.sample_rate, audio.info.channels) == (rate, channels)
    assert peak_hz(audio.samples, SAMPLE_RATE) == pytest.approx(440.0, abs=5.0)
    expected_rms = rms(tone(440.0, 1.0, SAMPLE_RATE, channels).mean(axis=0))
    assert rms(audio.samples) == pytest.approx(expected_rms, rel=0.02)


def test_a_high_tone_keeps_its_frequency() -> None:
    audio = decode_audio(wav(tone(3_000.0, 1.0, 44_100), 44_100))

    assert peak_hz(audio.samples, SAMPLE_RATE) == pytest.approx(3_000.0, abs=5.0)


def test_content_above_8khz_is_filtered_not_aliased() -> None:
    # A 10 kHz tone cannot exist at 16 kHz; a resampler without a low-pass filter folds it to 6 kHz.
    audio = decode_audio(wav(tone(10_000.0, 1.0, 44_100), 44_100))

    assert rms(audio.samples) < 0.01


def test_decodes_a_path_like_the_same_bytes(tmp_path: Path) -> None:
    data = encode_tone(FORMATS["flac"][0])
    path = tmp_path / "tone.flac"
    path.write_bytes(data)

    from_path, from_bytes = decode_audio(path), decode_audio(data)

    assert np.array_equal(from_path.samples, from_bytes.samples)
    assert from_path.info == from_bytes.info


def test_concatenated_mp3_files_decode_end_to_end() -> None:
    # The junction holds a second header the decoder rejects; such packets are skipped, as ffmpeg does.
    one = encode_tone(Clip("mp3", "libmp3lame"), seconds=1.0)

    audio = decode_audio(one + one)

    assert audio.duration_s == pytest.approx(2.0, abs=0.1)


def test_async_decode_runs_in_a_thread() -> None:
    audio = asyncio.run(decode_audio_async(wav(tone(440.0, 0.5, 16_000), 16_000)))

    assert audio.duration_s == pytest.approx(0.5)


def test_refuses_to_block_an_event_loop() -> None:
    async def decode_on_the_loop() -> None:
        decode_audio(wav(tone(440.0, 0.1, 16_000), 16_000))

    with pytest.raises(RuntimeError, match="worker thread"):
        asyncio.run(decode_on_the_loop())


# --- streaming ---------------------------------------------------------------------------------------


def test_stream_yields_fixed_chunks_lazily_and_matches_decode_audio() -> None:
    data = wav(tone(440.0, 2.5, 16_000), 16_000)

    with AudioStream(data) as stream:
        assert (stream.container, stream.codec, stream.sample_rate, stream.channels) == (
            "wav",
            "pcm_s16le",
            16_000,
            1,
        )
        chunks = stream.chunks(chunk_s=1.0)
        first = next(chunks)
        decoded_after_first = stream.decoded_s
        rest = list(chunks)
        info = stream.info

    assert [len(c) for c in [first, *rest]] == [16_000, 16_000, 8_000]
    assert decoded_after_first < 2.0  # only what the first chunk needed was decoded
    assert info.duration_s == 2.5
    assert np.array_equal(np.concatenate([first, *rest]), decode_audio(data).samples)


def test_closing_mid_read_stops_the_reader_instead_of_touching_freed_memory() -> None:
    # The server closes a stream from the event loop while a worker thread reads it (a cancelled request).
    stream = AudioStream(silent_wav(16_000, 10.0))
    chunks = stream.chunks(chunk_s=1.0)
    next(chunks)

    stream.close()

    with pytest.raises(RuntimeError, match="closed while it was being read"):
        next(chunks)


def test_stream_can_be_read_only_once() -> None:
    with AudioStream(wav(tone(440.0, 0.2, 16_000), 16_000)) as stream:
        stream.read()
        with pytest.raises(RuntimeError, match="only once"):
            stream.read()


# --- limits ------------------------------------------------------------------------------------------


def test_over_byte_limit_is_refused_before_decoding() -> None:
    garbage = np.random.default_rng(1).bytes(20_000)  # would be AudioDecodeError if it were decoded

    with pytest.raises(AudioTooLarge) as raised:
        decode_audio(garbage, AudioLimits(max_bytes=10 * 1024))

    assert raised.value.message == "Audio is 19.5 KB; qasr accepts at most 10 KB."


def test_over_byte_limit_file_is_refused_from_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.wav"
    path.write_bytes(np.random.default_rng(2).bytes(3 * 1024 * 1024))

    with pytest.raises(AudioTooLarge, match=r"Audio is 3 MB; qasr accepts at most 2 MB\."):
        decode_audio(path, AudioLimits(max_bytes=2 * 1024 * 1024))


def test_declared_duration_far_over_the_limit_is_refused_before_decoding() -> None:
    twenty_minutes = silent_wav(8_000, 20 * 60)

    # Opening raises, so no chunk was ever decoded.
    with pytest.raises(AudioTooLong) as raised:
        AudioStream(twenty_minutes, AudioLimits(max_duration_s=300))

    assert raised.value.message == (
        "Audio is 20 minutes long; qasr accepts at most 5 minutes. Trim it or split it into shorter files."
    )


def test_decoding_stops_as_soon_as_the_limit_is_passed() -> None:
    # Chained Ogg: the container declares the last link's 1 minute, but 20 minutes follow.
    one_minute = encode_silence(Clip("ogg", "flac", rate=8_000), 60.0)
    twenty_minutes = one_minute * 20

    with AudioStream(twenty_minutes, AudioLimits(max_duration_s=300)) as stream:
        assert stream.declared_duration_s == pytest.approx(60.0)
        with pytest.raises(AudioTooLong) as raised:
            for _ in stream.chunks(chunk_s=30.0):
                pass
        decoded_s = stream.decoded_s

    assert 300.0 < decoded_s < 302.0  # stopped within a frame of the limit, 900 s before the end
    assert raised.value.message == (
        "Audio is longer than 5 minutes; qasr accepts at most 5 minutes. "
        "Trim it or split it into shorter files."
    )
    with pytest.raises(AudioTooLong, match="longer than 5 minutes"):
        decode_audio(twenty_minutes, AudioLimits(max_duration_s=300))


def test_audio_at_the_limit_passes_and_just_over_fails() -> None:
    limits = AudioLimits(max_duration_s=5.0)

    assert decode_audio(silent_wav(16_000, 5.0), limits).duration_s == 5.0
    with pytest.raises(AudioTooLong, match="longer than 5 seconds"):
        decode_audio(silent_wav(16_000, 5.6), limits)
    with pytest.raises(AudioTooLong, match="Audio is 7 seconds long"):
        decode_audio(silent_wav(16_000, 7.0), limits)


# --- failures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(np.random.default_rng(0).bytes(5_000), id="random-bytes"),
        pytest.param(b"This is a plain text file, not audio.\n" * 40, id="text"),
    ],
)
def test_non_media_data_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(AudioDecodeError) as raised:
        decode_audio(data)

    assert raised.value.message.startswith(
        "The data is not audio qasr can read: it is corrupt, truncated, or another kind of file"
    )
    assert "(FFmpeg: Invalid data found when processing input)" in raised.value.message


@pytest.mark.parametrize(
    ("make", "container"),
    [(png_image, "png_pipe"), (video_only_mp4, MP4)],
    ids=["png", "video-only-mp4"],
)
def test_media_without_audio_is_no_audio_stream(make: Callable[[], bytes], container: str) -> None:
    with pytest.raises(NoAudioStream) as raised:
        decode_audio(make())

    assert raised.value.message == (
        f"The file ({container}) has no audio track; send a recording or a video with sound."
    )


def test_audio_whose_every_packet_is_damaged_is_a_decode_error() -> None:
    damaged = scramble_adts(encode_tone(Clip("adts", "aac")))

    with pytest.raises(AudioDecodeError, match="not audio qasr can read: the decoder rejected every packet"):
        decode_audio(damaged)


def test_empty_bytes_are_empty_audio() -> None:
    with pytest.raises(EmptyAudio, match=r"The audio is empty \(0 bytes\)"):
        decode_audio(b"")


def test_zero_length_audio_is_empty_audio() -> None:
    with pytest.raises(EmptyAudio, match="contains no audio samples"):
        decode_audio(wav_header(16_000, 0))


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"Audio file not found: .*nothing\.wav"):
        decode_audio(tmp_path / "nothing.wav")


def test_a_directory_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is a directory, not an audio file"):
        decode_audio(tmp_path)


@pytest.mark.parametrize(
    ("name", "text", "error", "message"),
    [
        (
            "list.m3u8",
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\n{segment}\n#EXT-X-ENDLIST\n",
            ForbiddenSource,
            "The file is a playlist or refers to other files or URLs",
        ),
        (
            "list.ffconcat",
            "ffconcat version 1.0\nfile seg.ts\n",
            AudioDecodeError,
            "not audio qasr can read",
        ),
    ],
)
def test_playlists_cannot_make_ffmpeg_open_other_files(
    tmp_path: Path, name: str, text: str, error: type[Exception], message: str
) -> None:
    # The referenced segment is valid audio: had FFmpeg opened it, decoding would have succeeded.
    segment = tmp_path / "seg.ts"
    segment.write_bytes(encode_tone(Clip("mpegts", "mp2")))
    playlist = tmp_path / name
    playlist.write_text(text.format(segment=segment))

    with pytest.raises(error, match=message):
        decode_audio(playlist)


# --- user-facing numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "0.5 seconds"),
        (1, "1 second"),
        (45, "45 seconds"),
        (60, "1 minute"),
        (450, "7.5 minutes"),
        (7200, "2 hours"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [
        (1, "1 byte"),
        (512, "512 bytes"),
        (3584, "3.5 KB"),
        (10 * 1024 * 1024, "10 MB"),
        (12_900_000, "12.3 MB"),
    ],
)
def test_format_bytes(n_bytes: int, text: str) -> None:
    assert format_bytes(n_bytes) == text
