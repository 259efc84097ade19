"""`emoverse.data.audio`: the FLAC round trip, reading a clip's audio span with PyAV, and the quality checks.

The clips are written here with PyAV (`write_clip`, also used by the AMT build tests): H.264 video with
an AAC, PCM or FLAC track whose content is known (a tone, silence, a full-scale square wave) or no track.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from emoverse.data.audio import (
    AUDIO_FAULTS,
    CLIP_FRACTION,
    MAX_SAMPLES,
    MIN_SECONDS,
    SAMPLE_RATE,
    SILENCE_DBFS,
    AudioFault,
    audio_fault,
    clipped_fraction,
    decode_audio,
    encode_audio,
    read_audio,
    read_clip_audio,
    rms_dbfs,
)

TONE_HZ = 440.0


def tone(seconds: float, rate: int, amplitude: float = 0.3, hz: float = TONE_HZ) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def signal(kind: str, seconds: float, rate: int) -> np.ndarray:
    """The track's mono content: "tone" (440 Hz at -13.5 dBFS), "silent" (zeros), "clipped" (a +-1 square wave),
    "ramp" (a tone whose frequency tells the time: 200 Hz + 100 Hz per second)."""
    n = int(seconds * rate)
    if kind == "tone":
        return tone(seconds, rate)
    if kind == "silent":
        return np.zeros(n, np.float32)
    if kind == "clipped":
        return np.where(np.sin(2 * np.pi * 100 * np.arange(n) / rate) >= 0, 1.0, -1.0).astype(np.float32)
    if kind == "ramp":
        t = np.arange(n) / rate
        return (0.3 * np.sin(2 * np.pi * (200 * t + 50 * t * t))).astype(np.float32)
    raise ValueError(kind)


def write_clip(path: Path, seconds: float, audio: str | None = "tone", audio_seconds: float | None = None,
               codec: str = "aac", rate: int = 44100, channels: int = 2, fps: int = 2,
               container: str | None = None) -> Path:
    """A clip of `seconds` of flat H.264 frames and, unless `audio` is None, an audio track of `audio_seconds`
    (default: as long as the video) holding `signal(audio)` on every channel, in the container the file name
    says (or `container`, e.g. "matroska")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream("libx264", rate=fps, options={"crf": "0", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        track = None
        if audio is not None:
            layout = "stereo" if channels == 2 else "mono"
            track = out.add_stream(codec, rate=rate, layout=layout)
        for k in range(int(seconds * fps) + 1):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 8 * k % 256, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                out.mux(packet)
        if track is not None:
            wave = signal(audio, audio_seconds if audio_seconds is not None else seconds, rate)
            fmt = track.codec_context.codec.audio_formats[0].name
            chunk = track.codec_context.frame_size or 1024
            for start in range(0, len(wave), chunk):
                part = np.tile(wave[start:start + chunk], (channels, 1))
                if fmt in ("s16", "s16p"):
                    part = np.clip(np.round(part * 32768), -32768, 32767).astype(np.int16)
                if not fmt.endswith("p"):  # packed: one row of interleaved samples
                    part = part.T.reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format=fmt, layout=track.layout.name)
                frame.sample_rate, frame.pts = rate, start
                for packet in track.encode(frame):
                    out.mux(packet)
            for packet in track.encode():
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return path


def dominant_hz(wave: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


def test_flac_round_trip_is_lossless_at_16_bits_and_deterministic() -> None:
    wave = np.random.default_rng(0).uniform(-0.999, 0.999, SAMPLE_RATE).astype(np.float32)
    data = encode_audio(wave)
    assert data[:4] == b"fLaC" and data == encode_audio(wave)
    back = decode_audio(data, "w")
    assert back.dtype == np.float32 and back.shape == wave.shape
    assert np.abs(back - wave).max() <= 1 / 65536 + 1e-7  # the 16-bit quantisation step, halved
    assert np.array_equal(decode_audio(encode_audio(back), "w"), back)  # 16-bit values round-trip exactly
    assert b"Lavf" not in data  # no encoder version tag: the bytes do not change with the FFmpeg build


def test_bad_blobs_and_arrays_are_value_errors_naming_where() -> None:
    where = "shard.tar record r1 audio"
    for blob in (b"", b"fLaC" + b"\x00" * 40, b"RIFF garbage" * 8):
        with pytest.raises(ValueError, match=f"^{where}: "):
            decode_audio(blob, where)
    for bad, words in ((np.zeros((2, 100), np.float32), "1-D float32"), (np.zeros(100), "float64"),
                       (np.full(10, 1.5, np.float32), r"\[1.5, 1.5\]"), (np.zeros(0, np.float32), "0 samples"),
                       (np.zeros(MAX_SAMPLES + 1, np.float32), "cut longer clips")):
        with pytest.raises(ValueError, match=f"^{where}: .*{words}"):
            decode_audio(bad, where)
    with pytest.raises(ValueError, match="^encode_audio: .*float64"):
        encode_audio(np.zeros(100))


@pytest.mark.parametrize(("codec", "rate", "channels"), [("aac", 44100, 2), ("pcm_s16le", 48000, 1),
                                                         ("flac", 22050, 2)])
def test_read_audio_resamples_to_16k_mono_and_cuts_the_span(tmp_path: Path, codec: str, rate: int,
                                                             channels: int) -> None:
    path = write_clip(tmp_path / ("c.mp4" if codec == "aac" else "c.mkv"), 4.0, "ramp", codec=codec, rate=rate,
                      channels=channels)
    whole, cut = read_audio(path)
    assert not cut and whole.dtype == np.float32 and whole.ndim == 1
    assert abs(len(whole) / SAMPLE_RATE - 4.0) < 0.05
    span, _ = read_audio(path, 1.0, 2.0)
    assert abs(len(span) - SAMPLE_RATE) <= 2
    # the ramp's frequency at time t is 200 + 100 t Hz: the span [1, 2] s sweeps 300..400 Hz
    assert 330 < dominant_hz(span) < 370
    assert abs(rms_dbfs(span) - 20 * np.log10(0.3 / np.sqrt(2))) < 1.0  # mono mix-down keeps the level


def test_spans_past_max_seconds_are_cut_and_say_so(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "long.mkv", 3.0, "tone", codec="pcm_s16le", rate=SAMPLE_RATE, channels=1)
    wave, cut = read_audio(path, max_seconds=1.0)
    assert cut and len(wave) == SAMPLE_RATE
    wave, cut = read_audio(path, 0.5, 1.2, max_seconds=1.0)
    assert not cut and abs(len(wave) - 0.7 * SAMPLE_RATE) <= 2
    wave, cut = read_audio(path, 0.5, 2.8, max_seconds=1.0)
    assert cut and len(wave) == SAMPLE_RATE
    assert not read_audio(path, max_seconds=3.5)[1]  # the whole file fits


@pytest.mark.parametrize(("kind", "seconds", "fault"), [
    ("tone", 1.0, None), ("silent", 1.0, "silent_audio"), ("clipped", 1.0, "clipped_audio"),
    ("tone", MIN_SECONDS / 2, "too_short_audio"),
])
def test_quality_faults_of_decoded_tracks(tmp_path: Path, kind: str, seconds: float, fault: str | None) -> None:
    path = write_clip(tmp_path / "c.mkv", 1.0, kind, audio_seconds=seconds, codec="pcm_s16le", rate=SAMPLE_RATE,
                      channels=1)
    got = read_clip_audio(path)
    assert got.fault == fault and not got.cut
    assert (got.wave is None) == (fault in ("silent_audio", "too_short_audio"))  # clipped audio is kept
    assert fault is None or fault in AUDIO_FAULTS


def test_missing_stream_file_and_undecodable_audio(tmp_path: Path) -> None:
    no_track = write_clip(tmp_path / "v.mp4", 1.0, None)
    got = read_clip_audio(no_track)
    assert (got.fault, got.wave) == ("no_audio_stream", None) and str(no_track) in got.detail
    with pytest.raises(AudioFault, match="no audio stream") as err:
        read_audio(no_track)
    assert err.value.reason == "no_audio_stream"
    assert read_clip_audio(tmp_path / "absent.wav").fault == "missing_audio_file"
    garbage = tmp_path / "bad.wav"
    garbage.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    got = read_clip_audio(garbage)
    assert got.fault == "undecodable_audio" and str(garbage) in got.detail


def test_thresholds_sit_where_documented() -> None:
    quiet = tone(1.0, SAMPLE_RATE, amplitude=10 ** ((SILENCE_DBFS - 1) / 20) * np.sqrt(2))
    audible = tone(1.0, SAMPLE_RATE, amplitude=10 ** ((SILENCE_DBFS + 1) / 20) * np.sqrt(2))
    assert audio_fault(quiet) == "silent_audio" and audio_fault(audible) is None
    wave = tone(1.0, SAMPLE_RATE)
    n = int(CLIP_FRACTION * len(wave))
    wave[:n] = 1.0
    assert clipped_fraction(wave) == pytest.approx(CLIP_FRACTION) and audio_fault(wave) is None
    wave[: n + 10] = -1.0
    assert audio_fault(wave) == "clipped_audio"
    assert audio_fault(np.zeros(0, np.float32)) == "too_short_audio"
    assert audio_fault(tone(MIN_SECONDS, SAMPLE_RATE)) is None
