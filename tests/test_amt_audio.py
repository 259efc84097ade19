"""`emoverse amt build` with audio: the real annotation files plus synthetic clips whose audio tracks are known.

MELD dev rows get clips with a good AAC track, no audio stream, a silent track, a clipped track, a
track too short and one longer than MAX_SECONDS; ECF 2.0 test turns get AAC tracks; CMU-MOSEI segments
read their audio from a separate WAV_16000-style folder (a frequency ramp that tells the time, a
missing file, a corrupt file). The manifest must count each fault, the shards must hold the audio, and
the same build with `--audio false` must be the shards without their audio.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
import wave as wavfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from emoverse.amt.build import AMTBuildConfig, build_amt
from emoverse.amt.cli import main as amt_main
from emoverse.amt.sources import ECFSource, MELDSource, MOSEISource
from emoverse.data.audio import AUDIO_KEY, MAX_SAMPLES, SAMPLE_RATE, read_audio
from emoverse.data.shards import ShardIndex
from tests.test_audio import TONE_HZ, dominant_hz, write_clip
from tests.test_cli import _losses

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "meld").exists(), reason=f"real annotation data not found at {DATA}")

LIMIT = 6
# MELD dev clip -> (audio kind, audio seconds, codec); video 2 s unless said otherwise
MELD_CLIPS = {
    "dia0_utt0": ("tone", None, "aac"),
    "dia0_utt1": (None, None, None),           # no audio stream
    "dia1_utt0": ("silent", None, "pcm_s16le"),
    "dia1_utt1": ("clipped", None, "pcm_s16le"),
    "dia1_utt2": ("tone", 0.05, "pcm_s16le"),  # too short
    "dia1_utt3": ("tone", None, "pcm_s16le"),  # 31 s: cut to 30 s
}
RAMP_HZ_PER_S = 10.0  # the MOSEI WAV's frequency at time t: 200 + 10 t Hz
SEGMENTS = DATA / "cmu_mosei" / "s3prl_labels" / "CMU_MOSEI_Labels.csv"


def write_ramp_wav(path: Path, seconds: float) -> None:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = 0.3 * np.sin(2 * np.pi * (200 * t + RAMP_HZ_PER_S / 2 * t * t))
    path.parent.mkdir(parents=True, exist_ok=True)
    with wavfile.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(np.round(wave * 32767).astype("<i2").tobytes())


def segments(video: str) -> list[tuple[float, float]]:
    with SEGMENTS.open() as f:
        return [(float(r["start"]), float(r["end"])) for r in csv.DictReader(f) if r["file"] == video]


def write_inputs(root: Path) -> dict:
    for stem, (kind, seconds, codec) in MELD_CLIPS.items():
        length = 31.0 if stem == "dia1_utt3" else 2.0
        fmt = "matroska" if codec == "pcm_s16le" else None  # MELD names every clip .mp4; PyAV reads by content
        write_clip(root / "meld" / f"{stem}.mp4", length, kind, audio_seconds=seconds, codec=codec or "aac",
                   rate=SAMPLE_RATE if codec == "pcm_s16le" else 44100, channels=1 if codec == "pcm_s16le" else 2,
                   container=fmt, fps=1 if length > 10 else 2)
    for turn in range(1, LIMIT + 1):
        write_clip(root / "ecf" / f"dia1375utt{turn}.mp4", 2.0, "tone")
    # MOSEI (first LIMIT segments of each split): train -3g5yACwYnA, val 112433, test z0y1ZxH1f74; full videos
    for video in ("-3g5yACwYnA", "112433", "z0y1ZxH1f74"):
        write_clip(root / "mosei" / "videos" / f"{video}.mp4", max(e for _, e in segments(video)) + 1.0, None, fps=1)
    write_ramp_wav(root / "mosei" / "wav" / "112433.wav", max(e for _, e in segments("112433")) + 1.0)
    (root / "mosei" / "wav" / "z0y1ZxH1f74.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8)
    return {
        "output": str(root / "amt"), "num_frames": 2, "frame_size": 16, "shard_size": 4, "limit": LIMIT,
        "meld": {"root": str(DATA / "meld"), "files": {"val": "dev_sent_emo.csv"}, "videos": {"val": str(root / "meld")}},
        "ecf": {"files": {"test": str(DATA / "ecf" / "semeval2024_ecac" / "Subtask_2_test.json")},
                "videos": str(root / "ecf")},
        "mosei": {"labels": str(DATA / "cmu_mosei" / "text_subset_ailiwood" / "mosei_text_label_subset.csv"),
                  "folds": str(DATA / "cmu_mosei" / "standard_folds" / "cmu_mosei_std_folds.json"),
                  "segments": str(SEGMENTS), "videos": str(root / "mosei" / "videos"), "audio": str(root / "mosei" / "wav")},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    root = tmp_path_factory.mktemp("amt_audio")
    config = write_inputs(root)
    (root / "amt.yaml").write_text(yaml.safe_dump(config))
    out = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(out):
        assert amt_main(["build", "--config", str(root / "amt.yaml"), "--progress", "false"]) == 0
    return root, json.loads((root / "amt" / "manifest.json").read_text()), out.getvalue()


def all_records(amt: Path) -> dict:
    out = {}
    for split in ("train", "val", "test"):
        index = ShardIndex(amt, split)
        out.update({r.id: r for r in (index.record(i) for i in range(len(index)))})
    return out


def test_manifest_counts_each_audio_fault_and_keeps_every_record(built) -> None:
    root, manifest, printed = built
    assert manifest["dropped"] == {} and manifest["labels_removed"] == {}  # no record or label lost to audio
    assert manifest["audio"]["faults"] == {"audio_cut": 1, "clipped_audio": 1, "missing_audio_file": LIMIT,
                                           "no_audio_stream": 1, "silent_audio": 1, "too_short_audio": 1,
                                           "undecodable_audio": LIMIT}
    records = all_records(root / "amt")
    assert len(records) == manifest["table1"]["Total"] == 5 * LIMIT  # MELD, ECF, and MOSEI in three splits
    with_audio = {rid for rid, r in records.items() if r.audio is not None}
    assert with_audio == {"meld_val_d0_u0", "meld_val_d1_u1", "meld_val_d1_u3",
                          *(f"ecf_c1375_u{t}" for t in range(1, LIMIT + 1)),
                          *(rid for rid in records if rid.startswith("mosei_112433_"))}
    assert manifest["audio"]["records"] == len(with_audio) == 15 and manifest["audio"]["enabled"] is True
    assert {s: v["audio"] for s, v in manifest["splits"].items()} == {"train": 0, "val": 9, "test": LIMIT}
    assert all(r.frames for r in records.values())  # a record without audio keeps its frames
    assert f"records with audio: 15; audio faults: {manifest['audio']['faults']}" in printed
    qc = [json.loads(line) for line in (root / "amt" / "qc.jsonl").read_text().splitlines()]
    silent = next(q for q in qc if q["kind"] == "audio" and q["reason"] == "silent_audio")
    assert silent["id"] == "meld_val_d1_u0" and "dev_sent_emo.csv line 4" in silent["origin"]
    assert "dia1_utt0.mp4" in silent["detail"] and "-inf dBFS" in silent["detail"]
    missing = [q for q in qc if q["reason"] == "missing_audio_file"]
    assert {q["detail"] for q in missing} == {str(root / "mosei" / "wav" / "-3g5yACwYnA.wav")}


def test_shards_hold_each_clips_audio(built) -> None:
    root, _, _ = built
    records = all_records(root / "amt")
    good = records["meld_val_d0_u0"].audio  # AAC, 44.1 kHz stereo in the clip
    assert good.dtype == np.float32 and abs(len(good) / SAMPLE_RATE - 2.0) < 0.05
    assert abs(dominant_hz(good) - TONE_HZ) < 2
    assert np.mean(np.abs(records["meld_val_d1_u1"].audio) >= 0.999) > 0.9  # clipped audio is kept as it is
    assert len(records["meld_val_d1_u3"].audio) == MAX_SAMPLES  # the 31 s clip keeps its first 30 s
    with tarfile.open(next((root / "amt" / "val").glob("*.tar"))) as tar:
        names = [m.name for m in tar]
        raw = tar.extractfile(f"meld_val_d0_u0.{AUDIO_KEY}").read()
    assert f"meld_val_d0_u0.{AUDIO_KEY}" in names and f"meld_val_d0_u1.{AUDIO_KEY}" not in names
    assert raw[:4] == b"fLaC"


def test_mosei_segments_take_their_span_of_the_wav(built) -> None:
    root, _, _ = built
    records = all_records(root / "amt")
    mosei = {rid: r for rid, r in records.items() if rid.startswith("mosei_112433_")}
    assert len(mosei) == LIMIT
    spans = segments("112433")
    for rid, r in mosei.items():
        clip_start = float(rid.split("_", 2)[2].replace("_", "."))
        start, end = min(spans, key=lambda s: abs(s[0] - clip_start))
        assert abs(len(r.audio) - (end - start) * SAMPLE_RATE) <= 2
        # the ramp is at 200 + 10 t Hz: the segment's audio sweeps f(start)..f(end)
        assert 200 + RAMP_HZ_PER_S * start - 3 <= dominant_hz(r.audio) <= 200 + RAMP_HZ_PER_S * end + 3
        direct, _ = read_audio(root / "mosei" / "wav" / "112433.wav", start, end)
        assert np.abs(r.audio - direct).max() <= 1 / 32768  # the stored FLAC is the span, to 16 bits


def test_audio_false_builds_the_same_shards_without_their_audio(built, tmp_path: Path) -> None:
    root, _, _ = built
    off = tmp_path / "amt"
    assert amt_main(["build", "--config", str(root / "amt.yaml"), "--progress", "false", "--audio", "false",
                     "--output", str(off)]) == 0
    manifest = json.loads((off / "manifest.json").read_text())
    assert manifest["audio"] == {"enabled": False, "records": 0, "faults": {}}
    assert not any(q for q in (off / "qc.jsonl").read_text().splitlines() if '"kind": "audio"' in q)
    shards = sorted(p.relative_to(off) for p in off.glob("*/amt-*.tar"))
    assert shards == sorted(p.relative_to(root / "amt") for p in (root / "amt").glob("*/amt-*.tar"))
    for rel in shards:
        with tarfile.open(off / rel) as a, tarfile.open(root / "amt" / rel) as b:
            plain = [(m.name, a.extractfile(m).read()) for m in a]
            with_audio = [(m.name, b.extractfile(m).read()) for m in b if not m.name.endswith(AUDIO_KEY)]
        assert [n for n, _ in plain] == [n for n, _ in with_audio]
        for (name, x), (_, y) in zip(plain, with_audio):
            if name.endswith(".json"):
                meta = json.loads(y)
                assert meta.pop("audio", AUDIO_KEY) == AUDIO_KEY
                assert x == json.dumps(meta, ensure_ascii=False).encode()  # the JSON of the audio-less record
            else:
                assert x == y


def test_worker_processes_and_reruns_write_the_same_audio_shards(built, tmp_path: Path) -> None:
    root, manifest, _ = built

    def hashes(amt: Path) -> dict[str, str]:
        return {str(p.relative_to(amt)): hashlib.sha256(p.read_bytes()).hexdigest() for p in amt.glob("*/amt-*.tar")}

    assert amt_main(["build", "--config", str(root / "amt.yaml"), "--progress", "false", "--workers", "2",
                     "--output", str(tmp_path / "amt")]) == 0
    assert hashes(tmp_path / "amt") == hashes(root / "amt")  # FLAC bytes do not depend on the process
    again = json.loads((tmp_path / "amt" / "manifest.json").read_text())
    assert again["audio"] == manifest["audio"]


# sha256 over (relative path, bytes) of every shard of the text-only build below, as the code before audio
# existed (commit a549650) wrote it: no codec is involved, so the hash does not depend on FFmpeg or libjpeg
TEXT_ONLY_SHARDS_SHA256 = "0f2ac27ab367d2b1303721eea52daec0602183fc0b96d3b22adece905fca6e42"


@pytest.mark.parametrize("audio", [True, False])
def test_a_build_without_audio_writes_the_shards_of_the_code_before_audio(tmp_path: Path, audio: bool) -> None:
    config = AMTBuildConfig(
        output=str(tmp_path), require_media=False, limit=5, shard_size=4, audio=audio,
        meld=MELDSource(str(DATA / "meld")),
        ecf=ECFSource(files={"test": str(DATA / "ecf" / "semeval2024_ecac" / "Subtask_2_test.json")}),
        mosei=MOSEISource(labels=str(DATA / "cmu_mosei" / "text_subset_ailiwood" / "mosei_text_label_subset.csv"),
                          folds=str(DATA / "cmu_mosei" / "standard_folds" / "cmu_mosei_std_folds.json")))
    build_amt(config, progress=False)
    digest = hashlib.sha256()
    shards = sorted(tmp_path.glob("*/amt-*.tar"))
    for path in shards:
        digest.update(path.relative_to(tmp_path).as_posix().encode())
        digest.update(path.read_bytes())
    assert len(shards) == 10 and digest.hexdigest() == TEXT_ONLY_SHARDS_SHA256


def test_emoverse_fit_trains_an_audio_backbone_on_the_build(built, tmp_path: Path) -> None:
    """The build's audio reaches training: `tiny_audio` fits on the clips that kept their audio (the MELD dev and
    CMU-MOSEI val records: the build's train split has none, so they are written again as a train split here), and
    its audio projector moves."""
    import dataclasses

    import torch

    from emoverse.backbones import create_backbone
    from emoverse.cli import main as emoverse_main
    from emoverse.data.shards import write_shards

    root, _, _ = built
    data = tmp_path / "amt"
    index = ShardIndex(root / "amt", "val")
    heard = [index.record(i) for i in range(len(index))]
    assert sum(r.audio is not None for r in heard) == 9
    write_shards([dataclasses.replace(r, split="train") for r in heard], data, "train")
    write_shards(heard, data, "val")
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 2, "accelerator": "cpu", "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "log_every_n_steps": 1, "default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}}},
        "model": {"class_path": "emoverse.EmoVerseModule",
                  "init_args": {"backbone": "tiny_audio", "tasks": ["msa", "mer"], "lr": 0.01,
                                "task_args": {"mer": {"media": ["audio"]}}}},  # msa: frames + audio (the default)
        "data": {"class_path": "emoverse.AMTDataModule",
                 "init_args": {"path": str(data), "batch_size": 8, "num_frames": 2}},
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    emoverse_main(["fit", "--config", str(tmp_path / "fit.yaml")])
    run = next(tmp_path.glob("lightning_logs/version_*"))
    losses = _losses(run)
    assert len(losses) == 2 and all(np.isfinite(losses))
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    before = create_backbone("tiny_audio").core.audio_projector.state_dict()
    moved = [k for k, v in state.items() if ".audio_projector." in k
             and not torch.equal(v, before[k.split(".audio_projector.", 1)[1]])]
    assert moved, "the audio projector did not train: no audio reached the model"
