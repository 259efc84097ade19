"""AMT build benchmarks: FER peak frames, shard reading, clip decoding (baselines measured in the same run).

1. FER throughput (OpenFace rows/s) on a real multi-face OpenFace CSV repeated 100 times (69,800 rows):
   `emoverse.amt.peak_frame` (pandas C parser + numpy/groupby) against the per-row `csv.DictReader` loop
   emoverse used before; end to end (parse + peak) and the peak computation alone (from the parsed table,
   against a Python loop over the same parsed rows).
2. Shard reading (samples/s, one worker, 4 decoded 448 px frames a sample): `ShardIndex.record` on AMT
   shards (448 px JPEGs stored at build time) against a JSON list plus one image file per frame opened with
   PIL, the way LLaMA-Factory, ms-swift and InternVL load data: with frames at source resolution
   (1280x720, MELD's) resized to 448 on load, and with frames already 448 px (the container alone).
3. Building (s/clip): `read_clip` on synthetic 1280x720 H.264 clips of 3.6 s at 24 fps (MELD's mean
   utterance length), 8 frames + a peak frame at 448 px; `build_amt` on a subset, the first 8 MELD dev rows
   with those clips and a real OpenFace CSV each; the full-build time extrapolated from the subset.

Each comparison alternates its contenders (5 rounds, the order reversed every other round) so machine-load
drift hits them alike. Run: `python benchmarks/amt_build.py`; the last line is a JSON object with the
medians and ratios.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from PIL import Image

from emoverse.amt.build import AMTBuildConfig, build_amt, write_tar
from emoverse.amt.peak import peak_frame, peak_of, read_openface_csv
from emoverse.amt.sources import MELDSource
from emoverse.amt.video import read_clip
from emoverse.data.record import AMTLabels, AMTRecord
from emoverse.data.shards import ShardIndex

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OPENFACE = DATA / "openface" / "act409" / "clip1.csv"  # multi-face, 698 rows
OPENFACE_SHORT = DATA / "openface" / "emoinfer" / "changeLighting.csv"  # one face, 88 rows (5.8 s)
MELD = DATA / "meld"
REPEATS = 5


def median_time(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: list[Callable[[], object]], repeats: int = 5) -> list[float]:
    """Median time of each function, run in turn (reversed every other round) so machine-load drift hits all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = list(range(len(fns)))[:: 1 if r % 2 == 0 else -1]
        for i in order:
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def loop_peak(path: Path) -> tuple[int, int]:
    """The per-row baseline: csv.DictReader, float() per cell, a Python max per face."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        intensities = [c for c in reader.fieldnames if c.startswith("AU") and c.endswith("_r")]
        presences = [c for c in reader.fieldnames if c.startswith("AU") and c.endswith("_c")]
        best: dict[int, tuple[float, int, list[int]]] = {}
        for row in reader:
            if float(row["success"]) != 1:
                continue
            score = sum(float(row[c]) for c in intensities)
            face, frame = int(float(row["face_id"])), int(float(row["frame"]))
            active = [int(c[2:4]) for c in presences if float(row[c]) == 1]
            if face not in best or score > best[face][0]:
                best[face] = (score, frame, active)
    face = max(best, key=lambda k: best[k][0])
    return best[face][1], face


def loop_peak_parsed(columns: list[str], rows: list[list[float]]) -> tuple[int, int]:
    """The per-row loop over rows already parsed to floats (the computation alone)."""
    col = {c: i for i, c in enumerate(columns)}
    intensities = [col[c] for c in columns if c.endswith("_r")]
    best: dict[int, tuple[float, int]] = {}
    for row in rows:
        if row[col["success"]] != 1:
            continue
        score = sum(row[i] for i in intensities)
        face = int(row[col["face_id"]])
        if face not in best or score > best[face][0]:
            best[face] = (score, int(row[col["frame"]]))
    face = max(best, key=lambda k: best[k][0])
    return best[face][1], face


def bench_fer(tmp: Path) -> dict[str, float]:
    lines = OPENFACE.read_text().splitlines()
    big = tmp / "openface_x100.csv"
    big.write_text("\n".join([lines[0], *lines[1:] * 100]) + "\n")
    rows = (len(lines) - 1) * 100
    vec = peak_frame(big)
    assert (vec.frame, vec.face_id) == loop_peak(big)
    t_vec, t_loop = interleaved([lambda: peak_frame(big), lambda: loop_peak(big)])
    table = read_openface_csv(big)
    parsed = table.to_numpy().tolist()
    assert loop_peak_parsed(list(table.columns), parsed) == (vec.frame, vec.face_id)
    c_vec, c_loop = interleaved([lambda: peak_of(table), lambda: loop_peak_parsed(list(table.columns), parsed)], 7)
    return {"fer_rows": rows, "fer_rows_per_s": rows / t_vec, "fer_loop_rows_per_s": rows / t_loop,
            "fer_speedup": t_loop / t_vec, "fer_compute_rows_per_s": rows / c_vec,
            "fer_compute_loop_rows_per_s": rows / c_loop, "fer_compute_speedup": c_loop / c_vec}


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like frame: smooth colour fields plus sensor noise (JPEG decoding cost depends on content)."""
    coarse = rng.integers(0, 255, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noisy = smooth + rng.normal(0, 6, smooth.shape).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bench_reading(tmp: Path, samples: int = 48, frames: int = 4) -> dict[str, float]:
    rng = np.random.default_rng(0)
    records, listing = [], {"source": [], "small": []}
    for i in range(samples):
        full = [photo(rng, 1280, 720) for _ in range(frames)]
        small = [f.resize((448, 448), Image.BICUBIC) for f in full]
        records.append(AMTRecord(id=f"s{i}", source="meld", split="train", text="hi", labels=AMTLabels(emotion="joy"),
                                 frames=[jpeg(f) for f in small]))
        for kind, images in (("source", full), ("small", small)):
            paths = []
            for k, image in enumerate(images):
                path = tmp / kind / f"s{i}_{k}.jpg"
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(jpeg(image))
                paths.append(str(path))
            listing[kind].append({"id": f"s{i}", "images": paths, "query": "hi", "response": "Joy."})
    (tmp / "amt" / "train").mkdir(parents=True)
    write_tar(records, tmp / "amt" / "train" / "amt-train-000000.tar")
    for kind in listing:
        (tmp / f"{kind}.json").write_text(json.dumps(listing[kind]))

    def shards() -> None:
        index = ShardIndex(tmp / "amt", "train")
        for i in range(len(index)):
            [f.convert("RGB") for f in index.record(i).frames]

    def json_list(kind: str) -> None:
        for item in json.loads((tmp / f"{kind}.json").read_text()):
            images = [Image.open(p).convert("RGB") for p in item["images"]]
            if kind == "source":
                images = [im.resize((448, 448), Image.BICUBIC) for im in images]

    t_shards, t_source, t_small = interleaved([shards, lambda: json_list("source"), lambda: json_list("small")])
    return {"read_samples": samples, "read_frames_per_sample": frames, "shard_samples_per_s": samples / t_shards,
            "json_source_res_samples_per_s": samples / t_source, "json_448_samples_per_s": samples / t_small,
            "read_speedup_vs_source_res": t_source / t_shards, "read_speedup_vs_448_files": t_small / t_shards}


def bench_clips(tmp: Path, clips: int = 8, seconds: float = 3.6, fps: int = 24) -> dict[str, float]:
    """`read_clip` alone, and `build_amt` on a MELD subset: the first dev rows, with these clips as their videos
    and a real OpenFace CSV as each clip's AU output (reading the CSV, FER, frames, shard writing, manifest)."""
    rng = np.random.default_rng(1)
    base = np.asarray(photo(rng, 1280, 720))
    rows = list(csv.DictReader((MELD / "dev_sent_emo.csv").open(encoding="utf-8")))[:clips]
    videos, openface = tmp / "meld_videos", tmp / "meld_openface"
    videos.mkdir()
    openface.mkdir()
    paths = []
    for c, row in enumerate(rows):
        stem = f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}"
        path = videos / f"{stem}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23"})
            stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
            for k in range(int(seconds * fps)):
                frame = np.roll(base, 4 * k + c, axis=1)  # a panning scene
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        shutil.copy(OPENFACE_SHORT, openface / f"{stem}.csv")
        paths.append(path)
    t_clip = median_time(lambda: [read_clip(p, 8, 448, peak_time=seconds * 0.6) for p in paths]) / clips
    source = MELDSource(str(MELD), files={"val": "dev_sent_emo.csv"}, videos={"val": str(videos)},
                        openface={"val": str(openface)})

    def build() -> None:
        out = tmp / "amt_subset"
        shutil.rmtree(out, ignore_errors=True)
        manifest = build_amt(AMTBuildConfig(output=str(out), meld=source, limit=clips), progress=False)
        assert manifest["table1"]["Total"] == clips and manifest["table1"]["Facial Expression Recognition"] == clips

    t_build = median_time(build) / clips
    # MELD 13,708 utterance clips + ECF 2.0 test 3,101 (its training clips are MELD's) at ~3.6 s each,
    # CMU-MOSEI 23,259 segments at their mean length (7.6 s in the s3prl segment table): decode time ~ length
    clip_equivalents = 13_708 + 3_101 + 23_259 * 7.6 / seconds
    return {"clip_s": t_clip, "clips_per_s": 1 / t_clip, "subset_build_s_per_clip": t_build,
            "full_build_clip_equivalents": clip_equivalents, "full_build_hours_one_worker": clip_equivalents * t_build / 3600}


def main() -> None:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if OPENFACE.exists():
            figures.update(bench_fer(root))
        else:
            print(f"skipping the FER benchmark: {OPENFACE} not found")
        figures.update(bench_reading(root))
        if MELD.exists():
            figures.update(bench_clips(root))
        else:
            print(f"skipping the build benchmark: {MELD} not found")
    for key, value in figures.items():
        print(f"{key:36s} {value:,.3f}")
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
