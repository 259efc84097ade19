"""`AMTRecord.audio` in memory, in the JSON metadata and in shards (`{id}.audio.flac`), read by index and stream.

The format-level guarantee that an audio-less record is stored exactly as before audio existed is
checked against the JSON and the shard hash that the code before this change wrote (commit a549650).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emoverse.data.audio import AUDIO_KEY, SAMPLE_RATE, decode_audio, encode_audio
from emoverse.data.record import AMTLabels, AMTRecord, Utterance
from emoverse.data.shards import CorruptShardError, ShardIndex, stream_records, write_shard, write_shards


def wave(seconds: float = 0.5, hz: float = 330.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.25 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def record(i: int, audio: np.ndarray | bytes | None = None, split: str = "train") -> AMTRecord:
    frames = [Image.new("RGB", (16, 16), (10 * i % 256, 40, 90)) for _ in range(2)]
    return AMTRecord(id=f"r{i}", source="meld", split=split, text=f"utterance {i}", labels=AMTLabels(emotion="joy"),
                     frames=frames, peak_frame=1, audio=audio)


TINY_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1RV19iZ2hnPk1xeXBk"
    "eFxlZ2P/wAALCAABAAEBAREA/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEG"
    "E1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJ"
    "ipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/9oACAEBAAA/ACv/2Q==")
"""A 1x1 grey JPEG (the writer decodes every frame it is given as bytes)."""


def golden_records() -> list[AMTRecord]:
    """The records whose JSON and shard were recorded with the code before audio existed (the shard hash: the
    AMT builder's own writer before the one validated `write_shard` replaced it, on the same records)."""
    rec = AMTRecord(id="ecf_c1_u2", source="ecf", split="train", text="I can’t believe it!", speaker="Rachel",
                    dialogue_id="ecf_c1", turn=2, context=[Utterance(1, "Ross", "Guess what.", "neutral")],
                    labels=AMTLabels(emotion="surprise", au_caption="Jaw drop.", cause_pairs=[(2, 1, "surprise")]),
                    frames=[TINY_JPEG, TINY_JPEG], peak_frame=1)
    return [rec, AMTRecord(id="mosei_x_1", source="mosei", split="train", text="ok",
                           labels=AMTLabels(sentiment=0.6666667))]


GOLDEN_JSON = ('{"id": "ecf_c1_u2", "source": "ecf", "split": "train", "text": "I can’t believe it!", "labels": '
               '{"sentiment": null, "emotion": "surprise", "au_caption": "Jaw drop.", "reason": null, "cause_pairs": '
               '[[2, 1, "surprise"]]}, "speaker": "Rachel", "dialogue_id": "ecf_c1", "turn": 2, "context": '
               '[{"turn": 1, "speaker": "Ross", "text": "Guess what.", "emotion": "neutral"}], "peak_frame": 1, '
               '"num_frames": 2}')
GOLDEN_TAR_SHA256 = "c4cf1fe6f2e44cacf55f5881253c5369065fc5da15afbb0e2867d60f652a1718"


def test_audio_less_records_are_stored_byte_for_byte_as_before(tmp_path: Path) -> None:
    records = golden_records()
    assert records[0].to_json() == GOLDEN_JSON
    write_shard(records, tmp_path / "a.tar", "train")
    assert hashlib.sha256((tmp_path / "a.tar").read_bytes()).hexdigest() == GOLDEN_TAR_SHA256
    # the same record with audio differs only by the flag and the member
    records[0].audio = wave()
    meta = json.loads(records[0].to_json())
    assert meta.pop("audio") == AUDIO_KEY and meta == json.loads(GOLDEN_JSON)
    write_shard(records, tmp_path / "b.tar", "train")
    with tarfile.open(tmp_path / "b.tar") as tar:
        assert [m.name for m in tar] == ["ecf_c1_u2.json", "ecf_c1_u2.f0.jpg", "ecf_c1_u2.f1.jpg",
                                         f"ecf_c1_u2.{AUDIO_KEY}", "mosei_x_1.json"]


def test_record_validates_its_audio_like_its_frames() -> None:
    assert record(0, wave()).audio.dtype == np.float32
    assert record(0, encode_audio(wave())).audio[:4] == b"fLaC"
    for bad, words in ((wave().astype(np.float64), "dtype float64"), (np.stack([wave(), wave()]), "1-D"),
                       (np.full(8, 2.0, np.float32), r"\[2.0, 2.0\]"), (np.zeros(0, np.float32), "0 samples"),
                       (b"RIFF....WAVE", "not FLAC"), ([0.1, 0.2], "list")):
        with pytest.raises(ValueError, match=f"^record r0: .*{words}"):
            record(0, bad)
    # compared records with waveforms do not raise numpy's "truth value of an array is ambiguous"
    assert record(1, wave()) == record(1, wave(hz=500.0))


def test_write_shards_round_trips_audio_through_the_index_and_the_stream(tmp_path: Path) -> None:
    raw = wave(0.75)
    flac = encode_audio(wave(0.25, hz=880.0))
    records = [record(0, raw), record(1), record(2, flac)]
    write_shards(records, tmp_path, "train")
    index = ShardIndex(tmp_path, "train")
    got = {r.id: r for r in (index.record(i) for i in range(len(index)))}
    assert got["r1"].audio is None
    assert np.array_equal(got["r0"].audio, decode_audio(encode_audio(raw), "r0"))
    assert np.abs(got["r0"].audio - raw).max() < 1e-4
    assert np.array_equal(got["r2"].audio, decode_audio(flac, "r2"))
    assert index.audio_bytes(2) == flac and index.audio_bytes(1) is None  # FLAC bytes are stored as given
    assert index.record(0, with_frames=False).audio is None  # metadata-only reads decode nothing
    assert index.record(0, with_frames=False, with_audio=True).audio is not None
    assert index.record(0, with_audio=False).audio is None and index.record(0, with_audio=False).frames
    streamed = {r.id: r for r in stream_records(tmp_path, "train")}
    assert streamed["r1"].audio is None
    assert all(r.audio is None and r.frames for r in stream_records(tmp_path, "train", with_audio=False))
    assert np.array_equal(streamed["r0"].audio, got["r0"].audio)
    assert np.array_equal(streamed["r2"].audio, got["r2"].audio)
    # in memory, the JSON metadata round trip keeps the flag and takes the decoded audio back
    meta = json.loads(got["r0"].to_json())
    again = AMTRecord.from_metadata(meta, got["r0"].frames, audio=got["r0"].audio)
    assert again.to_json() == got["r0"].to_json() and np.array_equal(again.audio, got["r0"].audio)


def test_write_shards_rejects_audio_that_would_not_read_back(tmp_path: Path) -> None:
    bad = record(0, b"fLaC" + b"\x01" * 64)  # the marker passes the record check; decoding fails at writing
    with pytest.raises(ValueError, match="^record r0 audio: cannot decode the audio"):
        write_shards([bad], tmp_path, "train")


def _rewrite(path: Path, change) -> None:
    """Rewrite a shard with `change(name, data) -> (name, data) | None` applied to every member."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            out = change(name, data)
            if out is None:
                continue
            info = tarfile.TarInfo(out[0])
            info.size = len(out[1])
            tar.addfile(info, io.BytesIO(out[1]))


def _drop_audio(name: str, data: bytes):
    return None if name.endswith(AUDIO_KEY) else (name, data)


def _break_audio(name: str, data: bytes):
    return (name, b"fLaC" + b"\x00" * 80) if name.endswith(AUDIO_KEY) else (name, data)


def _unflag(name: str, data: bytes):
    if not name.endswith(".json"):
        return name, data
    return name, json.dumps({k: v for k, v in json.loads(data).items() if k != "audio"}).encode()


def _misflag(name: str, data: bytes):
    return (name, json.dumps({**json.loads(data), "audio": "audio.wav"}).encode()) if name.endswith(".json") else (name, data)


@pytest.mark.parametrize(("change", "message"), [
    (_drop_audio, f"says audio='{AUDIO_KEY}' but the (shard has no r0.{AUDIO_KEY}|{AUDIO_KEY} member is missing)"),
    (_break_audio, "audio: cannot decode the audio"),
    (_unflag, f"(audio=None but the shard has a r0.{AUDIO_KEY}|an {AUDIO_KEY} member but its .json has no)"),
    (_misflag, "audio='audio.wav' in its metadata; expected 'audio.flac'"),
])
def test_corrupt_or_inconsistent_audio_members_are_named_errors(tmp_path: Path, change, message: str) -> None:
    write_shards([record(0, wave())], tmp_path, "train")
    shard = next((tmp_path / "train").glob("*.tar"))
    _rewrite(shard, change)
    with pytest.raises(ValueError, match=f"^{shard} record r0.*{message}"):  # indexing, or decoding record 0
        ShardIndex(tmp_path, "train").record(0)
    with pytest.raises(CorruptShardError, match=f"^{shard} record r0.*{message}"):
        list(stream_records(tmp_path, "train"))


def test_on_corrupt_skip_leaves_out_a_record_with_a_broken_audio_member(tmp_path: Path) -> None:
    write_shards([record(0, wave()), record(1)], tmp_path, "train")
    shard = next((tmp_path / "train").glob("*.tar"))
    _rewrite(shard, lambda n, d: (n, b"fLaC" + b"\x00" * 80) if n.endswith(AUDIO_KEY) else (n, d))
    with pytest.warns(UserWarning, match="r0 audio: cannot decode"):
        kept = [r.id for r in stream_records(tmp_path, "train", on_corrupt="skip")]
    assert kept == ["r1"]
