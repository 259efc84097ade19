"""AMT on disk: webdataset shards (`{id}.json` + `{id}.f{k}.jpg` per record), written and read back.

Layout: `{root}/{split}/amt-{split}-000000.tar ...` and `{root}/manifest.json`.
`ShardIndex` reads the shards by random access (a member index built from the tar headers), which
the task-weighted sampler needs for exact, resumable draws; `stream_records` reads them as a
webdataset stream split across DDP ranks and dataloader workers.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image

from emoverse.data.record import AMTRecord


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(data: bytes, where: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # PIL raises many types for corrupt data
        raise ValueError(f"{where}: not a decodable image ({err})") from err
    return img


def write_shards(records: Iterable[AMTRecord], root: str | Path, split: str, maxcount: int = 1000) -> list[Path]:
    """Write `records` of one split as webdataset shards under `root/split/`; returns the shard paths.

    Frames may be PIL images (encoded as JPEG) or JPEG bytes (written as they are).
    """
    out = Path(root) / split
    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out / f"amt-{split}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for rec in records:
            sample: dict[str, Any] = {"__key__": rec.id, "json": rec.to_json().encode()}
            for k, frame in enumerate(rec.frames):
                sample[f"f{k}.jpg"] = frame if isinstance(frame, bytes) else encode_jpeg(frame)
            sink.write(sample)
    return sorted(out.glob(f"amt-{split}-*.tar"))


def shard_paths(root: str | Path, split: str) -> list[Path]:
    paths = sorted((Path(root) / split).glob("*.tar"))
    if not paths:
        raise FileNotFoundError(f"no AMT shards for split {split!r} under {Path(root) / split} (expected *.tar)")
    return paths


@dataclass
class _Entry:
    shard: int
    meta: dict[str, Any]
    frames: list[tuple[int, int]] = field(default_factory=list)  # (offset, size) per frame, in order


class ShardIndex:
    """Random access to the records of a split: metadata in memory, frames read on demand."""

    def __init__(self, root: str | Path, split: str) -> None:
        self.paths = shard_paths(root, split)
        self.entries: list[_Entry] = []
        first_seen: dict[str, Path] = {}
        for s, path in enumerate(self.paths):
            for entry in _index_tar(path, s):
                rid = entry.meta.get("id")
                if rid in first_seen:
                    raise ValueError(f"record id {rid!r} appears twice: in {first_seen[rid]} and {path}")
                first_seen[rid] = path
                self.entries.append(entry)
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}

    def record(self, i: int, with_frames: bool = True) -> AMTRecord:
        """Record `i`, its frames decoded to PIL images when `with_frames`."""
        e = self.entries[i]
        where = f"{self.paths[e.shard]} record {e.meta.get('id')}"
        frames = [decode_image(self._read(e.shard, off, n), f"{where} frame {k}")
                  for k, (off, n) in enumerate(e.frames)] if with_frames else []
        return AMTRecord.from_metadata(e.meta, frames, where=where)

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if os.getpid() != self._pid:  # forked into a dataloader worker: do not share file offsets
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.paths[shard], "rb")  # noqa: SIM115  (kept open for reuse)
        f.seek(offset)
        return f.read(size)


def _index_tar(path: Path, shard: int) -> list[_Entry]:
    entries: dict[str, _Entry] = {}
    frames: dict[str, dict[int, tuple[int, int]]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.rpartition("/")[2].partition(".")
            if ext == "json":
                if key in entries:
                    raise ValueError(f"{path}: record key {key!r} appears twice")
                entries[key] = _Entry(shard, json.loads(tar.extractfile(m).read()))
            elif ext.startswith("f") and ext.endswith(".jpg") and ext[1:-4].isdigit():
                frames.setdefault(key, {})[int(ext[1:-4])] = (m.offset_data, m.size)
            else:
                raise ValueError(f"{path}: member {m.name!r}; expected {{key}}.json or {{key}}.f{{k}}.jpg")
    for key, e in entries.items():
        got = frames.get(key, {})
        want = e.meta.get("num_frames", len(got))
        if sorted(got) != list(range(want)):
            raise ValueError(f"{path} record {key}: frames {sorted(got)}, expected f0..f{want - 1}")
        e.frames = [got[k] for k in range(want)]
    missing = set(frames) - set(entries)
    if missing:
        raise ValueError(f"{path}: frames without a .json record for keys {sorted(missing)[:5]}")
    return list(entries.values())


def stream_records(root: str | Path, split: str, shuffle: int = 0, seed: int = 0) -> Iterator[AMTRecord]:
    """Stream a split's records with webdataset, shards split across DDP ranks and workers."""
    urls = [str(p) for p in shard_paths(root, split)]
    ds = wds.WebDataset(urls, shardshuffle=len(urls) if shuffle else False, seed=seed,
                        nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker, empty_check=False)
    if shuffle:
        ds = ds.shuffle(shuffle, seed=seed)
    for sample in ds:
        where = f"{sample['__url__']} record {sample['__key__']}"
        meta = json.loads(sample["json"])
        n = meta.get("num_frames", 0)
        frames = [decode_image(sample[f"f{k}.jpg"], f"{where} frame {k}") for k in range(n)]
        yield AMTRecord.from_metadata(meta, frames, where=where)
