"""`build_amt`: the public CMU-MOSEI, MELD and ECF releases → AMT shards, a manifest and a Table-1 summary.

1. Every source reader yields candidates and rejections (`emoverse.amt.sources`); duplicates and
   conflicts are resolved (`emoverse.amt.qc`); `limit` keeps the first records of each source and split.
2. Each split's candidates are cut, in reading order, into shards of `shard_size` records. A shard is
   a unit of work: its clips are decoded (frames: `emoverse.amt.video`; audio: `emoverse.data.audio`),
   its FER labels made from the AU rows
   (`emoverse.amt.fer`), its ERI reasons generated or read from the cache (`emoverse.amt.eri`), and it
   is written to a temporary file, renamed into place, and marked done by its QC sidecar
   (`amt-{split}-{k}.qc.json`, with a fingerprint of the settings and record ids). A rerun skips shards
   that are done for the same settings, so a build interrupted anywhere ends with the same shards as
   an uninterrupted one, and a changed setting rebuilds. Shards run in `workers` processes.
3. The manifest (`manifest.json`) sums the readers' rejections and every shard's QC; `qc.jsonl` lists
   each dropped record, removed label and audio fault with its origin (file and line) and reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from emoverse.amt.eri import ERIConfig, ERIPipeline
from emoverse.amt.facs import load_au_table
from emoverse.amt.fer import AUExtractor, OpenFaceCSVs, fer_result
from emoverse.amt.qc import QCLog, deduplicate
from emoverse.amt.sources.base import LABEL_REMOVALS, Candidate, Rejected
from emoverse.amt.sources.ecf import ECFSource
from emoverse.amt.sources.meld import MELDSource
from emoverse.amt.sources.mosei import MOSEISource
from emoverse.amt.video import MediaError, read_clip
from emoverse.data.audio import encode_audio, read_clip_audio
from emoverse.data.record import AMTRecord
from emoverse.data.shards import write_shard

TASK_LABELS: dict[str, str] = {"msa": "sentiment", "mer": "emotion", "fer": "au_caption", "eri": "reason",
                               "ecpe": "cause_pairs"}
TABLE1_NAMES: dict[str, str] = {"msa": "Multimodal Sentiment Analysis", "mer": "Multimodal Emotion Recognition",
                                "fer": "Facial Expression Recognition", "eri": "Emotion Reason Inference",
                                "ecpe": "Emotion Cause-Pair Extraction"}


@dataclass
class AMTBuildConfig:
    """What `emoverse amt build --config amt.yaml` builds (every field is a YAML key).

    Attributes:
        output: the AMT root (`{output}/{split}/amt-{split}-NNNNNN.tar`, `manifest.json`, `qc.jsonl`).
        mosei, meld, ecf: the sources (None: not used); see their classes for the fields.
        num_frames: frames per clip, uniformly spaced (the peak frame is added to them).
        frame_size: frames are resized to this square size (448 for InternVL2's ViT).
        jpeg_quality: JPEG quality of the stored frames.
        require_media: True: every source needs its video folder and a record whose video file is missing is
            dropped (`missing_media`); False: such records are kept text-only (`text_only` in qc.jsonl).
        audio: True: store each clip's audio track (16 kHz mono FLAC, at most 30 s; `emoverse.data.audio`)
            beside its frames; a clip whose audio is missing, undecodable, too short or silent is kept
            without audio and counted per reason (the manifest's `audio.faults`, `kind: audio` in qc.jsonl).
            False: no audio is read, and the shards are those of a build before audio existed.
        shard_size: records per shard (at most).
        workers: shard-building processes (1 = in this process).
        au_table: "emfacs", "merr" or a JSON/YAML AU table (`emoverse.amt.facs.load_au_table`).
        au_extractor: where AU rows come from; None: the OpenFace CSVs of each source's `openface` folder.
        min_confidence: AU rows with a lower OpenFace confidence are not peak candidates.
        eri: the ERI pipeline; None: no reasons.
        limit: keep only the first N records of each source and split (a subset build); None: all.
    """

    output: str
    mosei: MOSEISource | None = None
    meld: MELDSource | None = None
    ecf: ECFSource | None = None
    num_frames: int = 8
    frame_size: int = 448
    jpeg_quality: int = 90
    require_media: bool = True
    audio: bool = True
    shard_size: int = 1000
    workers: int = 1
    au_table: str = "emfacs"
    au_extractor: AUExtractor | None = None
    min_confidence: float = 0.0
    eri: ERIConfig | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if not self.sources():
            raise ValueError("AMTBuildConfig: no source; set at least one of mosei, meld, ecf")
        for name in ("num_frames", "frame_size", "shard_size", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AMTBuildConfig.{name}={value!r}: expected an int >= 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"AMTBuildConfig.jpeg_quality={self.jpeg_quality}: expected 1..100")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"AMTBuildConfig.limit={self.limit}: expected None or an int >= 1")
        if self.require_media:
            for source in self.sources():
                if source.videos is None:
                    raise ValueError(f"AMTBuildConfig: {source.name}.videos is not set but require_media is true; "
                                     "give the clip folder, or set require_media: false for text-only records")
        load_au_table(self.au_table)

    def sources(self) -> list[MOSEISource | MELDSource | ECFSource]:
        return [s for s in (self.mosei, self.meld, self.ecf) if s is not None]


@dataclass
class ShardJob:
    """One shard to build: its path and its candidates, in order."""

    split: str
    index: int
    path: Path
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".qc.json")


def plan_shards(config: AMTBuildConfig, log: QCLog) -> tuple[list[ShardJob], dict[str, dict[str, int]]]:
    """Read every source, resolve duplicates, apply `limit`, and cut each split into shard jobs.

    Returns the jobs and, per source and split, how many rows the source files hold.
    """
    candidates: list[Candidate] = []
    read: dict[str, Counter] = {}
    for source in config.sources():
        taken: Counter = Counter()
        counts = read.setdefault(source.name, Counter())
        for item in source.read():
            split = item.split if isinstance(item, Rejected) else item.record.split
            counts[split] += 1
            if config.limit is not None and taken[split] >= config.limit:
                continue
            taken[split] += 1
            if isinstance(item, Rejected):
                log.rejected(item)
            else:
                candidates.append(item)
    kept = deduplicate(candidates, log)
    by_split: dict[str, list[Candidate]] = {}
    for c in kept:
        by_split.setdefault(c.record.split, []).append(c)
    out = Path(config.output)
    jobs = []
    for split in sorted(by_split):
        items = by_split[split]
        for k in range(0, len(items), config.shard_size):
            index = k // config.shard_size
            jobs.append(ShardJob(split, index, out / split / f"amt-{split}-{index:06d}.tar",
                                 items[k:k + config.shard_size]))
    return jobs, {name: dict(sorted(c.items())) for name, c in read.items()}


class ShardBuilder:
    """Builds shard jobs: media, FER, ERI, then the tar file and its QC sidecar (one per process)."""

    def __init__(self, config: AMTBuildConfig) -> None:
        self.config = config
        self.table = load_au_table(config.au_table)
        self.extractor = config.au_extractor or OpenFaceCSVs()
        self.eri = ERIPipeline(config.eri, Path(config.output) / "cache" / "eri") if config.eri else None

    def __call__(self, job: ShardJob) -> dict[str, Any]:
        log = QCLog()
        records = []
        for c in job.candidates:
            r = self._media(c, log)
            if r is None:  # dropped (counted); its other reasons do not count
                continue
            for reason in c.removed:  # labels the reader removed, counted for the records kept
                log.remove(r.id, r.source, r.split, reason, c.origin, LABEL_REMOVALS[reason])
            records.append(r)
        if self.eri is not None:
            by_id = {r.id: r for r in records}
            for rid, reason in self.eri.reasons(records).items():
                by_id[rid].labels.reason = reason
        job.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = job.path.with_name(f".{job.path.name}.tmp")
        write_shard(records, tmp, job.split)  # validated as reading will check each record
        os.replace(tmp, job.path)
        with_audio = sum(r.audio is not None for r in records)
        for r in records:  # the media are on disk now; a one-process build would otherwise hold them all
            r.frames, r.audio = [], None
        result = {"split": job.split, "shard": job.path.name, "records": len(records), "audio": with_audio,
                  "sources": dict(Counter(r.source for r in records)), "labels": label_counts(records),
                  "qc": log.to_dict(), "fingerprint": fingerprint(self.config, job)}
        side_tmp = job.sidecar.with_name(f".{job.sidecar.name}.tmp")
        side_tmp.write_text(json.dumps(result, ensure_ascii=False))
        os.replace(side_tmp, job.sidecar)  # the sidecar marks the shard done
        return result

    def _media(self, c: Candidate, log: QCLog) -> AMTRecord | None:
        """The candidate's record with its frames, peak frame and FER caption; None when its media are missing or unreadable."""
        r = c.record
        if c.clip is None:
            return r
        if not c.clip.video.is_file():
            if self.config.require_media:
                log.drop(r.id, r.source, r.split, "missing_media", c.origin, str(c.clip.video))
                return None
            log.remove(r.id, r.source, r.split, "text_only", c.origin, str(c.clip.video))
            return r  # the text-only build: kept for its text tasks, counted
        label, no_label, fer_used = None, None, c.clip.au_csv is not None or self.config.au_extractor is not None
        if fer_used:
            label, no_label = fer_result(c.clip, r.labels.emotion, self.extractor, self.table,
                                         self.config.min_confidence)
        try:
            clip = read_clip(c.clip.video, self.config.num_frames, self.config.frame_size, c.clip.start, c.clip.end,
                             peak_time=label.time if label else None, quality=self.config.jpeg_quality)
        except MediaError as err:
            log.drop(r.id, r.source, r.split, "unreadable_media", c.origin, str(err))
            return None
        if fer_used and label is None and r.labels.emotion is not None:
            log.remove(r.id, r.source, r.split, no_label or "no_face", c.origin, str(c.clip.au_csv or c.clip.video))
        r.frames, r.peak_frame = clip.frames, clip.peak_frame
        if label is not None and label.caption is not None:
            r.labels.au_caption = label.caption
        if self.config.audio:
            self._audio(c, r, log)
        return r

    def _audio(self, c: Candidate, r: AMTRecord, log: QCLog) -> None:
        """Give `r` its clip's audio (the separate audio file, else the video's track), counting any fault."""
        assert c.clip is not None
        got = read_clip_audio(c.clip.audio or c.clip.video, c.clip.start, c.clip.end)
        if got.fault is not None:
            log.audio(r.id, r.source, r.split, got.fault, c.origin, got.detail)
        if got.cut:
            log.audio(r.id, r.source, r.split, "audio_cut", c.origin, got.detail)
        if got.wave is not None:
            r.audio = encode_audio(got.wave)


def label_counts(records: Sequence[AMTRecord]) -> dict[str, int]:
    return {task: sum(getattr(r.labels, f) is not None for r in records) for task, f in TASK_LABELS.items()}


def build_amt(config: AMTBuildConfig, progress: bool = True) -> dict[str, Any]:
    """Build the AMT described by `config`; returns the manifest (also written to `{output}/manifest.json`)."""
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    log = QCLog()
    jobs, read = plan_shards(config, log)
    _remove_stale_shards(out, jobs)
    todo = [j for j in jobs if not _done(j, config)]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="AMT shards", unit="shard", disable=not progress)
    if config.workers == 1 or len(todo) <= 1:
        builder = ShardBuilder(config)
        for job in todo:
            builder(job)
            bar.update()
    else:
        # fork starts a worker in milliseconds; CUDA (ERI on a GPU) needs spawn, which re-imports torch per worker
        cuda = config.eri is not None and config.eri.device.startswith("cuda")
        method = "spawn" if cuda or "fork" not in get_all_start_methods() else "fork"
        with ProcessPoolExecutor(config.workers, mp_context=get_context(method),
                                 initializer=_init_worker, initargs=(config,)) as pool:
            for _ in pool.map(_run_job, todo):
                bar.update()
    bar.close()
    return write_manifest(config, jobs, read, log)


def fingerprint(config: AMTBuildConfig, job: ShardJob) -> str:
    """What a shard's content depends on: the build settings (not `workers`) and its records' ids."""
    settings = {k: v for k, v in _jsonable(asdict(config)).items() if k != "workers"}
    settings["au_extractor"] = type(config.au_extractor).__qualname__ if config.au_extractor else None
    ids = [c.record.id for c in job.candidates]
    return hashlib.sha256(json.dumps([settings, ids], sort_keys=True).encode()).hexdigest()


def _done(job: ShardJob, config: AMTBuildConfig) -> bool:
    """A shard is done when it and its sidecar exist and the sidecar was written for the same settings and records."""
    if not (job.path.is_file() and job.sidecar.is_file()):
        return False
    try:
        return json.loads(job.sidecar.read_text()).get("fingerprint") == fingerprint(config, job)
    except json.JSONDecodeError:
        return False


_WORKER: ShardBuilder | None = None


def _init_worker(config: AMTBuildConfig) -> None:
    global _WORKER
    _WORKER = ShardBuilder(config)


def _run_job(job: ShardJob) -> dict[str, Any]:
    assert _WORKER is not None
    return _WORKER(job)


def _remove_stale_shards(out: Path, jobs: list[ShardJob]) -> None:
    """Shards of an earlier plan (another shard_size or limit) would be read with the new ones: remove them."""
    planned = {j.path for j in jobs} | {j.sidecar for j in jobs}
    for split_dir in {j.path.parent for j in jobs} | {p for p in out.iterdir() if p.is_dir() and p.name != "cache"}:
        for p in split_dir.glob("amt-*"):
            if p not in planned:
                p.unlink()


def write_manifest(config: AMTBuildConfig, jobs: list[ShardJob], read: dict[str, dict[str, int]],
                   log: QCLog) -> dict[str, Any]:
    out = Path(config.output)
    splits: dict[str, dict[str, Any]] = {}
    for job in jobs:
        result = json.loads(job.sidecar.read_text())
        log.extend(QCLog.from_dict(result["qc"]))
        s = splits.setdefault(job.split, {"records": 0, "audio": 0, "shards": 0, "sources": Counter(),
                                          "labels": Counter()})
        s["records"] += result["records"]
        s["audio"] += result.get("audio", 0)
        s["shards"] += 1
        s["sources"].update(result["sources"])
        s["labels"].update(result["labels"])
    for s in splits.values():
        s["sources"], s["labels"] = dict(sorted(s["sources"].items())), dict(s["labels"])
    totals = Counter()
    for s in splits.values():
        totals.update(s["labels"])
    table1 = {TABLE1_NAMES[t]: totals.get(t, 0) for t in TASK_LABELS}
    table1["Total"] = sum(s["records"] for s in splits.values())
    notes = {"ecf_duplicate_pairs_merged": config.ecf.duplicate_pairs} if config.ecf is not None else {}
    audio = {"enabled": config.audio, "records": sum(s["audio"] for s in splits.values()),
             "faults": log.audio_counts()}
    manifest = {"name": "emoverse-amt", "splits": splits, "source_rows": read, **log.counts(), "audio": audio,
                "notes": notes, "table1": table1,
                "config": _jsonable(asdict(config))}
    (out / "qc.jsonl").write_text(log.to_jsonl())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def format_table1(manifest: dict[str, Any]) -> str:
    """The paper's Table 1 ("The Number of Entries in the AMT Dataset") for this build."""
    rows = [("Tasks", "Number of Entries"), *((k, str(v)) for k, v in manifest["table1"].items())]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:>8}" for k, v in rows)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
