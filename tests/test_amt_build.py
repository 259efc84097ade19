"""`emoverse amt build` on the real annotation files plus synthetic videos written here.

One build (module scope) from the MELD CSVs, ECF 2.0 JSON and ECF 1.0 text, the CMU-MOSEI labels,
folds and segment table, and the real OpenFace CSVs; the tests check its counts against the source
files, its FER labels against an independent computation, its resumption, and that `emoverse fit`
trains on it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import shutil
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from emoverse.amt.build import AMTBuildConfig, build_amt
from emoverse.amt.cli import main as amt_main
from emoverse.amt.facs import AU_NAMES, AU_TABLES, NEUTRAL_CAPTION
from emoverse.amt.fer import AUExtractor
from emoverse.amt.sources import ECFSource, MELDSource, MOSEISource
from emoverse.data.shards import ShardIndex
from emoverse.tasks import ECPE

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "meld").exists(), reason=f"real annotation data not found at {DATA}")

FPS = 2
LIMIT = 4
# clip -> the real OpenFace CSV standing in for its OpenFace output
OPENFACE = {
    ("val", "dia0_utt0"): "act409/clip1.csv",          # two faces, failed rows; MELD dev row 1: sadness
    ("val", "dia0_utt1"): "emoinfer/default.csv",      # one face; surprise
    ("test", "dia0_utt1"): "emoinfer/changeLighting.csv",  # one face; anger
}
MISSING, CORRUPT = ("val", "dia1_utt0"), ("test", "dia1_utt0")


def write_video(path: Path, seconds: float, fps: int = FPS) -> None:
    """Flat frames whose colour tells the frame index k (red = 8 (k mod 32), green = 8 (k div 32)), H.264."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for k in range(int(seconds * fps) + 1):
            colour = np.array([8 * (k % 32), 8 * (k // 32), 128], np.uint8)
            frame = av.VideoFrame.from_ndarray(np.broadcast_to(colour, (24, 32, 3)).copy(), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def last_timestamp(csv_path: Path) -> float:
    with csv_path.open() as f:
        return max(float(r["timestamp"]) for r in csv.DictReader(f, skipinitialspace=True))


def meld_rows(split_file: str) -> list[dict[str, str]]:
    with (DATA / "meld" / split_file).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_inputs(root: Path) -> dict:
    """Videos and OpenFace CSVs for the first LIMIT records of every source and split; returns the config."""
    for split, name in (("train", "train_sent_emo.csv"), ("val", "dev_sent_emo.csv"), ("test", "test_sent_emo.csv")):
        for row in meld_rows(name)[:LIMIT]:
            stem = f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}"
            video = root / "meld" / split / f"{stem}.mp4"
            if (split, stem) == MISSING:
                continue
            if (split, stem) == CORRUPT:
                video.parent.mkdir(parents=True, exist_ok=True)
                video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
                continue
            source_csv = DATA / "openface" / OPENFACE[(split, stem)] if (split, stem) in OPENFACE else None
            write_video(video, last_timestamp(source_csv) + 0.5 if source_csv else 2.0)
            if source_csv:
                (root / "openface" / split).mkdir(parents=True, exist_ok=True)
                shutil.copy(source_csv, root / "openface" / split / f"{stem}.csv")
    for conv in (1375, 1):
        for turn in range(1, LIMIT + 1):
            write_video(root / "ecf" / f"dia{conv}utt{turn}.mp4", 2.0)
    segments = DATA / "cmu_mosei" / "s3prl_labels" / "CMU_MOSEI_Labels.csv"
    with segments.open() as f:
        ends: dict[str, float] = {}
        for r in csv.DictReader(f):
            ends[r["file"]] = max(ends.get(r["file"], 0.0), float(r["end"]))
    with (DATA / "cmu_mosei" / "text_subset_ailiwood" / "mosei_text_label_subset.csv").open() as f:
        videos = {r["video_id"] for r in csv.DictReader(f)}
    for v in videos:
        write_video(root / "mosei" / f"{v}.mp4", ends[v] + 1.0, fps=1)
    (root / "openface" / "mosei").mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA / "openface" / "act409" / "clip4.csv", root / "openface" / "mosei" / "112433.csv")
    return {
        "output": str(root / "amt"), "num_frames": 4, "frame_size": 32, "shard_size": 5, "limit": LIMIT,
        "meld": {"root": str(DATA / "meld"), "videos": {s: str(root / "meld" / s) for s in ("train", "val", "test")},
                 "openface": {s: str(root / "openface" / s) for s in ("val", "test")}},
        "ecf": {"files": {"train": str(DATA / "ecf" / "mecpe_ecf1" / "train.txt"),
                          "test": str(DATA / "ecf" / "semeval2024_ecac" / "Subtask_2_test.json")},
                "videos": str(root / "ecf")},
        "mosei": {"labels": str(DATA / "cmu_mosei" / "text_subset_ailiwood" / "mosei_text_label_subset.csv"),
                  "folds": str(DATA / "cmu_mosei" / "standard_folds" / "cmu_mosei_std_folds.json"),
                  "segments": str(segments), "videos": str(root / "mosei"), "openface": str(root / "openface" / "mosei")},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("amt_build")
    config = write_inputs(root)
    (root / "amt.yaml").write_text(yaml.safe_dump(config))
    assert amt_main(["build", "--config", str(root / "amt.yaml"), "--progress", "false"]) == 0
    manifest = json.loads((root / "amt" / "manifest.json").read_text())
    return root, config, manifest


def records(amt: Path, split: str) -> dict:
    index = ShardIndex(amt, split)
    return {r.id: r for r in (index.record(i) for i in range(len(index)))}


def shard_hashes(amt: Path) -> dict[str, str]:
    return {str(p.relative_to(amt)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(amt.glob("*/amt-*.tar"))}


def test_counts_match_the_source_files(built) -> None:
    _, _, manifest = built
    meld = {s: len(meld_rows(f)) for s, f in (("train", "train_sent_emo.csv"), ("val", "dev_sent_emo.csv"),
                                               ("test", "test_sent_emo.csv"))}
    assert manifest["source_rows"]["meld"] == meld == {"train": 9989, "val": 1109, "test": 2610}
    ecf_test = json.loads((DATA / "ecf" / "semeval2024_ecac" / "Subtask_2_test.json").read_text())
    ecf_train = sum(1 for line in (DATA / "ecf" / "mecpe_ecf1" / "train.txt").read_text().splitlines() if " | " in line)
    assert manifest["source_rows"]["ecf"] == {"test": sum(len(c["conversation"]) for c in ecf_test), "train": ecf_train}
    assert manifest["source_rows"]["mosei"] == {"train": 27, "val": 22, "test": 25}
    # LIMIT records per source and split were selected; every one is kept or dropped for a counted reason
    assert manifest["dropped"] == {"missing_media": 1, "unreadable_media": 1}
    kept = {s: v["sources"] for s, v in manifest["splits"].items()}
    assert kept == {"train": {"ecf": 4, "meld": 4, "mosei": 4}, "val": {"meld": 3, "mosei": 4},
                    "test": {"ecf": 4, "meld": 3, "mosei": 4}}
    # kept MELD records with an emotion and an OpenFace folder but no CSV lose their FER label, counted:
    # val dia1_utt1, test dia0_utt0 and dia0_utt2 (train has no OpenFace folder; dropped records are not counted)
    assert manifest["labels_removed"] == {"no_openface": 3}  # no CSV at all: not the same as a CSV with no face
    assert manifest["table1"]["Total"] == 30
    assert manifest["table1"]["Facial Expression Recognition"] == len(OPENFACE)
    assert manifest["table1"]["Multimodal Sentiment Analysis"] == 12
    assert manifest["table1"]["Emotion Cause-Pair Extraction"] == 8
    qc = [json.loads(line) for line in (built[0] / "amt" / "qc.jsonl").read_text().splitlines()]
    missing = next(q for q in qc if q["reason"] == "missing_media")
    assert missing["id"] == "meld_val_d1_u0" and "dev_sent_emo.csv line 4" in missing["origin"]


def _independent_peak(path: Path, start: float = -1.0, end: float = 1e9) -> tuple[float, list[int]]:
    """Timestamp and present AUs of the best usable row (max over faces of each face's best)."""
    best: dict[str, tuple[float, float, list[int]]] = {}
    with path.open() as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            t = float(row["timestamp"])
            if float(row["success"]) != 1 or not start <= t <= end:
                continue
            score = sum(float(v) for k, v in row.items() if k.endswith("_r"))
            if row["face_id"] not in best or score > best[row["face_id"]][0]:
                best[row["face_id"]] = (score, t, [int(k[2:4]) for k, v in row.items() if k.endswith("_c") and float(v) == 1])
    _, t, aus = max(best.values(), key=lambda b: b[0])
    return t, aus


def _frame_index(jpeg: Image.Image) -> int:
    red, green, _ = np.asarray(jpeg.convert("RGB"), dtype=np.float64).mean(axis=(0, 1))
    return round(red / 8) + 32 * round(green / 8)


@pytest.mark.parametrize(("split", "stem"), list(OPENFACE))
def test_peak_frame_and_caption_equal_an_independent_computation(built, split: str, stem: str) -> None:
    root, _, _ = built
    record = records(root / "amt", split)[f"meld_{split}_d{stem[3]}_u{stem[-1]}"]
    t, aus = _independent_peak(DATA / "openface" / OPENFACE[(split, stem)])
    assert _frame_index(record.frames[record.peak_frame]) == round(t * FPS)
    common = sorted(set(aus) & set(AU_TABLES["emfacs"].emotions[record.labels.emotion]))
    words = ", ".join(AU_NAMES[a] for a in common)
    assert record.labels.au_caption == (words[0].upper() + words[1:] + "." if common else NEUTRAL_CAPTION)
    assert len(record.frames) in (4, 5)  # 4 uniform frames, plus the peak unless it is one of them


def test_mosei_segment_peak_is_searched_inside_the_segment(built) -> None:
    root, _, _ = built
    val = records(root / "amt", "val")
    with_peak = [r for r in val.values() if r.source == "mosei" and r.peak_frame is not None]
    assert with_peak and all(r.labels.au_caption is None for r in with_peak)  # MOSEI has no emotion here
    with (DATA / "cmu_mosei" / "s3prl_labels" / "CMU_MOSEI_Labels.csv").open() as f:
        segs = [(float(r["start"]), float(r["end"])) for r in csv.DictReader(f) if r["file"] == "112433"]
    for r in with_peak:
        clip_start = float(r.id.split("_", 2)[2].replace("_", "."))
        start, end = min(segs, key=lambda s: abs(s[0] - clip_start))
        t, _ = _independent_peak(DATA / "openface" / "act409" / "clip4.csv", start, end)
        assert start <= t <= end
        assert _frame_index(r.frames[r.peak_frame]) == round(t)  # the MOSEI videos run at 1 fps


def test_ecf_records_carry_the_whole_conversation_for_ecpe(built) -> None:
    root, _, _ = built
    test = records(root / "amt", "test")
    first = test["ecf_c1375_u1"]
    assert [u.turn for u in first.context] == list(range(2, 17))
    assert first.labels.cause_pairs == [(1, 1, "disgust")]
    query, answer = ECPE().build(first, random.Random(0))
    assert "16_joy." in query.split("Candidate utterances:")[1]  # later turns are candidates too
    assert answer == "1_disgust,1"
    assert test["ecf_c1375_u4"].labels.cause_pairs == []


def test_rerun_skips_finished_shards_and_an_interrupted_build_ends_identical(built, tmp_path: Path) -> None:
    root, config, manifest = built
    amt = root / "amt"
    before = shard_hashes(amt)
    stamps = {p: p.stat().st_mtime_ns for p in amt.glob("*/amt-*.tar")}
    again = build_amt(_config(config), progress=False)
    assert {p: p.stat().st_mtime_ns for p in amt.glob("*/amt-*.tar")} == stamps  # nothing rebuilt
    assert {k: v for k, v in again.items() if k != "config"} == {k: v for k, v in manifest.items() if k != "config"}
    # an interruption: one shard finished without its sidecar, one half-written temporary file, one shard never started
    shards = sorted(amt.glob("*/amt-*.tar"))
    shards[0].with_suffix(".qc.json").unlink()
    shards[1].with_name(f".{shards[1].name}.tmp").write_bytes(b"partial")
    shards[1].unlink()
    shards[2].with_suffix(".qc.json").unlink()
    shards[2].unlink()
    build_amt(_config(config), progress=False)
    assert shard_hashes(amt) == before
    # a changed setting rebuilds every shard
    build_amt(_config({**config, "jpeg_quality": 50}), progress=False)
    after = shard_hashes(amt)
    assert set(after) == set(before) and all(after[k] != before[k] for k in before)
    build_amt(_config(config), progress=False)
    assert shard_hashes(amt) == before


def _config(raw: dict) -> AMTBuildConfig:
    raw = dict(raw)
    return AMTBuildConfig(**{**raw, "meld": MELDSource(**raw["meld"]), "ecf": ECFSource(**raw["ecf"]),
                             "mosei": MOSEISource(**raw["mosei"])})


def test_shard_frames_are_resized_jpegs(built) -> None:
    root, _, _ = built
    index = ShardIndex(root / "amt", "train")
    record = index.record(0)
    assert record.frames and all(f.size == (32, 32) for f in record.frames)
    raw = index._read(index.entries[0].shard, *index.entries[0].frames[0])
    assert Image.open(io.BytesIO(raw)).format == "JPEG"


@pytest.mark.slow
def test_emoverse_fit_trains_on_the_build(built, tmp_path: Path) -> None:
    from emoverse.cli import main as emoverse_main

    root, _, _ = built
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 2, "limit_val_batches": 1,
                    "num_sanity_val_steps": 0, "use_distributed_sampler": False, "log_every_n_steps": 1,
                    "default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}}},
        "model": {"class_path": "emoverse.EmoVerseModule", "init_args": {"backbone": "tiny", "lr": 0.001}},
        "data": {"class_path": "emoverse.AMTDataModule",
                 "init_args": {"path": str(root / "amt"), "batch_size": 4, "eval_batch_size": 4, "max_eval_per_task": 2}},
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    emoverse_main(["fit", "--config", str(tmp_path / "fit.yaml")])
    run = next(tmp_path.glob("lightning_logs/version_*"))
    with (run / "metrics.csv").open() as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_worker_processes_write_the_same_shards(built, tmp_path: Path) -> None:
    root, config, manifest = built
    parallel = build_amt(_config({**config, "output": str(tmp_path / "amt"), "workers": 2}), progress=False)
    assert shard_hashes(tmp_path / "amt") == shard_hashes(root / "amt")
    assert parallel["table1"] == manifest["table1"]


def test_example_config_parses() -> None:
    from emoverse.amt.cli import parse_config

    config, _ = parse_config(["--config", str(Path(__file__).resolve().parents[1] / "examples" / "amt" / "amt.yaml")])
    assert isinstance(config.meld, MELDSource) and config.eri.describer_kind == "vlm"
    assert config.meld.videos["val"].endswith("dev_splits_complete")


def test_amt_subcommand_usage_and_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from emoverse.cli import main as emoverse_main

    assert emoverse_main(["amt"]) == 2
    assert "usage: emoverse amt build" in capsys.readouterr().err
    with pytest.raises(ValueError, match="meld.videos is not set but require_media is true"):
        AMTBuildConfig(output=str(tmp_path), meld=MELDSource(str(DATA / "meld")))
    with pytest.raises(ValueError, match="no source"):
        AMTBuildConfig(output=str(tmp_path))


class _OneFaceAtOneSecond(AUExtractor):
    """A stand-in detector: one face, smiling most at t = 1.0 s."""

    def extract(self, clip):
        times = np.arange(0.0, 2.01, 0.5)
        return pd.DataFrame({"frame": np.arange(1, len(times) + 1), "face_id": 0, "timestamp": times, "confidence": 0.9,
                             "success": 1, "AU06_r": [0, 1, 3, 1, 0], "AU12_r": [0, 1, 2, 1, 0],
                             "AU06_c": [0, 1, 1, 1, 0], "AU12_c": [0, 0, 1, 0, 0]})


def test_another_au_detector_stands_in_for_openface(built, tmp_path: Path) -> None:
    root, config, _ = built
    meld = {**config["meld"], "files": {"test": "test_sent_emo.csv"}, "openface": None}
    manifest = build_amt(AMTBuildConfig(output=str(tmp_path / "amt"), meld=MELDSource(**meld), limit=1, num_frames=4,
                                        frame_size=32, au_extractor=_OneFaceAtOneSecond()), progress=False)
    record = records(tmp_path / "amt", "test")["meld_test_d0_u0"]  # surprise: no smile AU in its list
    assert _frame_index(record.frames[record.peak_frame]) == 1 * FPS
    assert record.labels.au_caption == NEUTRAL_CAPTION and manifest["labels_removed"] == {}


class _FaceNeverTracked(_OneFaceAtOneSecond):
    """OpenFace output whose every row failed tracking (success 0)."""

    def extract(self, clip):
        return super().extract(clip).assign(success=0)


class _NoOutput(AUExtractor):
    def extract(self, clip):
        return None


@pytest.mark.parametrize(("extractor", "reason"), [(_FaceNeverTracked(), "no_face"), (_NoOutput(), "no_openface")])
def test_no_face_and_no_openface_output_are_two_reasons(built, tmp_path: Path, extractor: AUExtractor,
                                                         reason: str) -> None:
    _, config, _ = built
    meld = {**config["meld"], "files": {"test": "test_sent_emo.csv"}, "openface": None}
    manifest = build_amt(AMTBuildConfig(output=str(tmp_path / "amt"), meld=MELDSource(**meld), limit=1, num_frames=4,
                                        frame_size=32, au_extractor=extractor), progress=False)
    assert manifest["labels_removed"] == {reason: 1}
    qc = [json.loads(line) for line in (tmp_path / "amt" / "qc.jsonl").read_text().splitlines()]
    qc = [q for q in qc if q["kind"] != "audio"]  # these clips have no audio track (tests/test_amt_audio.py)
    assert [q["reason"] for q in qc] == [reason] and qc[0]["id"] == "meld_test_d0_u0"


def test_require_media_false_keeps_records_whose_video_is_missing_text_only(built, tmp_path: Path) -> None:
    _, config, _ = built  # the val clip dia1_utt0 has no video file
    meld = {**config["meld"], "files": {"val": "dev_sent_emo.csv"}, "openface": None}
    manifest = build_amt(AMTBuildConfig(output=str(tmp_path / "amt"), meld=MELDSource(**meld), limit=LIMIT,
                                        num_frames=4, frame_size=32, require_media=False), progress=False)
    assert "missing_media" not in manifest["dropped"] and manifest["labels_removed"] == {"text_only": 1}
    kept = records(tmp_path / "amt", "val")
    assert len(kept) == LIMIT and kept["meld_val_d1_u0"].frames == []
    assert all(r.frames for rid, r in kept.items() if rid != "meld_val_d1_u0")
