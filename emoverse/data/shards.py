"""AMT on disk: webdataset shards (`{id}.json` + `{id}.f{k}.jpg` [+ `{id}.audio.flac`] per record), written and read back.

Layout: `{root}/{split}/amt-{split}-000000.tar ...` and `{root}/manifest.json`.
`ShardIndex` reads the shards by random access (a member index built from the tar headers), which
the task-weighted sampler needs for exact, resumable draws; `stream_records` reads them as a
webdataset stream split across DDP ranks and dataloader workers.

Every record is validated when written (`write_shards`) and when read; read errors name the shard
file and the record key. A corrupt shard or record (unreadable tar, invalid JSON, invalid fields,
missing frames or audio, audio that does not decode) is an error by default; `on_corrupt="skip"` skips it instead, counts it in
`ShardIndex.skipped` and warns once with the list (docs/reliability.md).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import webdataset as wds
from PIL import Image, UnidentifiedImageError

from emoverse.data.audio import AUDIO_KEY, decode_audio, encode_audio
from emoverse.data.record import FRAME_MODES, SPLITS, AMTRecord, has_audio

OnCorrupt = Literal["error", "skip"]
ON_CORRUPT: tuple[str, ...] = ("error", "skip")
_HEADER_BYTES = 2048  # a JPEG's size marker (SOF) follows APP0 and the quantisation tables: ~160 bytes in PIL's files


class CorruptShardError(ValueError):
    """A shard or record that cannot be read; the message names the file and, where known, the key."""


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(data: bytes, where: str, member: str | None = None) -> Image.Image:
    """Decode one frame; `where` (shard, record, frame) and the tar `member` name it in the error.

    Raises:
        CorruptShardError: the bytes are not an image PIL can decode.
    """
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # PIL raises many types for corrupt data
        # PIL's own message names an anonymous buffer ("cannot identify image file <_io.BytesIO object at 0x...>")
        reason = "not an image format PIL can identify" if isinstance(err, UnidentifiedImageError) else str(err)
        named = f"member {member}: " if member else ""
        raise CorruptShardError(f"{where}: not a decodable image ({named}{reason}, {len(data)} bytes)") from err
    return img


def frame_member(key: str, k: int) -> str:
    """The tar member name of frame `k` of record `key`."""
    return f"{key}.f{k}.jpg"


def write_shards(records: Iterable[AMTRecord], root: str | Path, split: str, maxcount: int = 1000) -> list[Path]:
    """Write `records` of one split as webdataset shards `root/split/amt-{split}-NNNNNN.tar` of up to `maxcount`
    records each (`write_shard`); returns the shard paths.

    Raises:
        ValueError: `split` is not a shard split, or a record is invalid (the id and field named).
    """
    if split not in SPLITS:
        raise ValueError(f"write_shards: split={split!r}, expected one of {SPLITS}")
    if isinstance(maxcount, bool) or not isinstance(maxcount, int) or maxcount < 1:
        raise ValueError(f"write_shards: maxcount={maxcount!r}, expected an int >= 1")
    out = Path(root) / split
    out.mkdir(parents=True, exist_ok=True)
    records, paths = iter(records), []
    while True:
        chunk = list(itertools.islice(records, maxcount))
        if paths and not chunk:
            break
        paths.append(out / f"amt-{split}-{len(paths):06d}.tar")
        write_shard(chunk, paths[-1], split)  # an empty split still gets its (empty) first shard
    return sorted(out.glob(f"amt-{split}-*.tar"))


def write_shard(records: Iterable[AMTRecord], path: str | Path, split: str) -> None:
    """Write one shard: per record `{id}.json`, `{id}.f{k}.jpg` and `{id}.audio.flac` when it has audio, in this
    order, byte-for-byte reproducible (fixed member order, mtime 0, mode 0o444). The one shard writer: the demo
    data (`write_shards`) and the AMT builder (`emoverse amt build`) both write through it.

    Frames may be PIL images (encoded as JPEG) or JPEG bytes (written as they are); audio a waveform
    (encoded as FLAC) or FLAC bytes (written as they are). Every record is checked first as reading will
    check it (`AMTRecord`'s field checks on its JSON round trip, its split equal to `split`, frames of an
    8-bit mode, JPEG bytes and FLAC bytes that decode), so a bad record fails here, named, instead of when
    training reads it.

    Raises:
        ValueError: a record is invalid (the id and field named).
    """
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for rec in records:
            sample = _sample(rec, split)
            key = sample.pop("__key__")
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                tar.addfile(info, io.BytesIO(data))


def _sample(rec: AMTRecord, split: str) -> dict[str, Any]:
    """The webdataset sample of a record, after the checks reading would make."""
    if not isinstance(rec, AMTRecord):
        raise ValueError(f"write_shards: got {type(rec).__name__}, expected AMTRecord")
    where = f"record {rec.id}"
    if rec.split != split:
        raise ValueError(f"{where}: split={rec.split!r} but it is written to the {split!r} shards")
    rec.__post_init__()  # fields may have been changed since construction
    text = rec.to_json()
    AMTRecord.from_metadata(json.loads(text), where=where)  # what a reader will see
    sample: dict[str, Any] = {"__key__": rec.id, "json": text.encode()}
    for k, frame in enumerate(rec.frames):
        if isinstance(frame, bytes):
            _check_jpeg(frame, f"{where} frame {k}")
            sample[f"f{k}.jpg"] = frame
        else:
            sample[f"f{k}.jpg"] = encode_jpeg(frame)
    if isinstance(rec.audio, (bytes, bytearray)):
        decode_audio(rec.audio, f"{where} audio")
        sample[AUDIO_KEY] = bytes(rec.audio)
    elif rec.audio is not None:
        sample[AUDIO_KEY] = encode_audio(rec.audio)
    return sample


def _check_jpeg(data: bytes, where: str) -> None:
    img = decode_image(data, where)
    if img.format != "JPEG":
        raise ValueError(f"{where}: {img.format} bytes; frames given as bytes must be JPEG (or pass a PIL image)")
    if img.mode not in FRAME_MODES:
        raise ValueError(f"{where}: image mode {img.mode!r}; expected an 8-bit image, one of {FRAME_MODES}")


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
    audio: tuple[int, int] | None = None  # (offset, size) of the audio member


class ShardIndex:
    """Random access to the records of a split: metadata in memory, frames read on demand.

    Args:
        root: AMT root.
        split: the split folder.
        on_corrupt: "error" (default) raises `CorruptShardError` naming the file and record key;
            "skip" leaves out an unreadable shard or a bad record, lists it in `skipped` as
            `(file, key or None, reason)` and warns once with the count.
    """

    def __init__(self, root: str | Path, split: str, on_corrupt: OnCorrupt = "error") -> None:
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"ShardIndex: on_corrupt={on_corrupt!r}, expected one of {ON_CORRUPT}")
        self.paths = shard_paths(root, split)
        self.entries: list[_Entry] = []
        self.skipped: list[tuple[str, str | None, str]] = []
        first_seen: dict[str, Path] = {}
        for s, path in enumerate(self.paths):
            try:
                entries = _index_tar(path, s, split, self.skipped if on_corrupt == "skip" else None)
            except CorruptShardError as err:
                if on_corrupt == "error":
                    raise
                self.skipped.append((str(path), None, str(err)))
                continue
            for entry in entries:
                rid = entry.meta.get("id")
                if rid in first_seen:
                    raise ValueError(f"record id {rid!r} appears twice: in {first_seen[rid]} and {path}")
                first_seen[rid] = path
                self.entries.append(entry)
        if self.skipped:
            shards = sum(key is None for _, key, _ in self.skipped)
            lines = "".join(f"\n  {reason}" for _, _, reason in self.skipped[:20])
            warnings.warn(f"ShardIndex({root}, {split!r}, on_corrupt='skip'): skipped {shards} shard(s) and "
                          f"{len(self.skipped) - shards} record(s); kept {len(self.entries)} records:{lines}", stacklevel=2)
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}

    def record(self, i: int, with_frames: bool = True, with_audio: bool | None = None) -> AMTRecord:
        """Record `i`, its frames decoded to PIL images when `with_frames` and its audio to a waveform
        when `with_audio` (default: as `with_frames`)."""
        e = self.entries[i]
        where = f"{self.paths[e.shard]} record {e.meta.get('id')}"
        key = str(e.meta.get("id"))
        frames = [decode_image(self._frame(e.shard, off, n, f"{where} frame {k}"), f"{where} frame {k}", frame_member(key, k))
                  for k, (off, n) in enumerate(e.frames)] if with_frames else []
        audio = None
        if e.audio is not None and (with_frames if with_audio is None else with_audio):
            audio = decode_audio(self._frame(e.shard, *e.audio, f"{where} audio"), f"{where} audio")
        return AMTRecord.from_metadata(e.meta, frames, where=where, audio=audio)

    def audio_bytes(self, i: int) -> bytes | None:
        """Record `i`'s audio member as stored (FLAC), or None when it has no audio."""
        e = self.entries[i]
        if e.audio is None:
            return None
        return self._frame(e.shard, *e.audio, f"{self.paths[e.shard]} record {e.meta.get('id')} audio")

    def frame_sizes(self, i: int) -> list[tuple[int, int]]:
        """(width, height) of record `i`'s frames, from their image headers (the pixels are not decoded)."""
        e = self.entries[i]
        where = f"{self.paths[e.shard]} record {e.meta.get('id')}"
        sizes = []
        for k, (off, n) in enumerate(e.frames):
            head = self._frame(e.shard, off, min(n, _HEADER_BYTES), f"{where} frame {k}")
            try:
                sizes.append(Image.open(io.BytesIO(head)).size)
            except Exception:  # a header longer than the prefix: read the whole frame
                frame = self._frame(e.shard, off, n, f"{where} frame {k}")
                sizes.append(decode_image(frame, f"{where} frame {k}", frame_member(str(e.meta.get("id")), k)).size)
        return sizes

    def _frame(self, shard: int, offset: int, size: int, where: str) -> bytes:
        try:
            return self._read(shard, offset, size)
        except CorruptShardError as err:
            raise CorruptShardError(f"{where}: {_short(err, self.paths[shard], None)}") from None
        except OSError as err:
            raise CorruptShardError(f"{where}: cannot read the frame ({type(err).__name__}: {err})") from err

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if os.getpid() != self._pid:  # forked into a dataloader worker: do not share file offsets
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.paths[shard], "rb")  # noqa: SIM115  (kept open for reuse)
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:  # the file shrank after it was indexed
            raise CorruptShardError(f"{self.paths[shard]}: {len(data)} of {size} bytes at offset {offset}; the "
                                    "shard was truncated or rewritten after it was indexed")
        return data


def _index_tar(path: Path, shard: int, split: str, skipped: list[tuple[str, str | None, str]] | None) -> list[_Entry]:
    """Index one shard. A bad record raises `CorruptShardError`, or is appended to `skipped` when given;
    an unreadable tar always raises (the caller decides whether the whole shard is skipped)."""
    entries: dict[str, _Entry] = {}
    frames: dict[str, dict[int, tuple[int, int]]] = {}
    audio: dict[str, tuple[int, int]] = {}
    bad: set[str] = set()

    def reject(key: str, reason: str) -> None:
        message = f"{path} record {key}: {reason}"
        if skipped is None:
            raise CorruptShardError(message)
        skipped.append((str(path), key, message))
        bad.add(key)

    last = None
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = m.name.rpartition("/")[2].partition(".")
                last = m.name
                if ext == "json":
                    if key in entries:
                        raise CorruptShardError(f"{path}: record key {key!r} appears twice")
                    try:
                        meta = json.loads(tar.extractfile(m).read())
                        AMTRecord.from_metadata(meta, where=f"{path} record {key}")
                    except ValueError as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                        reject(key, f"{key}.json is not a valid AMT record ({_short(err, path, key)})")
                        continue
                    if meta.get("id") != key:
                        reject(key, f"its .json has id={meta.get('id')!r}; expected the member key {key!r}")
                    elif meta.get("split") != split:
                        reject(key, f"split={meta.get('split')!r} in the {split!r} folder")
                    else:
                        entries[key] = _Entry(shard, meta)
                elif ext.startswith("f") and ext.endswith(".jpg") and ext[1:-4].isdigit():
                    frames.setdefault(key, {})[int(ext[1:-4])] = (m.offset_data, m.size)
                elif ext == AUDIO_KEY:
                    audio[key] = (m.offset_data, m.size)
                else:
                    raise CorruptShardError(f"{path}: member {m.name!r}; expected {{key}}.json, {{key}}.f{{k}}.jpg "
                                            f"or {{key}}.{AUDIO_KEY}")
    except (tarfile.TarError, EOFError, OSError) as err:
        after = f" at member {last}, record {last.rpartition('/')[2].partition('.')[0]}" if last else ""
        first_line = str(err).splitlines()[0].rstrip(":") if str(err) else ""
        raise CorruptShardError(f"{path}: not a readable tar shard ({type(err).__name__}: {first_line}{after}); "
                                "it may be truncated or not a webdataset shard") from err
    # tarfile stops quietly at a header cut short: only the missing end-of-archive shows the loss
    check_complete(path, f" after member {last}" if last else "")
    for key, e in list(entries.items()):
        got = frames.get(key, {})
        want = e.meta.get("num_frames", len(got))
        if sorted(got) != list(range(want)):
            del entries[key]
            reject(key, f"frames {sorted(got)}, expected f0..f{want - 1}")
            continue
        e.frames = [got[k] for k in range(want)]
        if has_audio(e.meta) != (key in audio):
            del entries[key]
            reject(key, f"its .json says audio={e.meta.get('audio')!r} but the shard has "
                        f"{'a' if key in audio else 'no'} {key}.{AUDIO_KEY} member")
            continue
        e.audio = audio.get(key)
    missing = (set(frames) | set(audio)) - set(entries) - bad
    if missing:
        raise CorruptShardError(f"{path}: frames or audio without a .json record for keys {sorted(missing)[:5]}")
    return list(entries.values())


def _short(err: Exception, path: Path, key: str | None) -> str:
    """The error's message without the file/record prefix the caller adds anyway."""
    return str(err).removeprefix(f"{path} record {key}" if key else str(path)).lstrip(": ")


END_OF_ARCHIVE = 1024  # a tar ends with two 512-byte zero blocks (padded to a multiple of 512)


def check_complete(path: str | Path, after: str = "") -> None:
    """Raise `CorruptShardError` unless the tar file `path` ends as a whole tar does (one seek, no scan).

    A shard cut anywhere (inside a header, a .json or a frame) lacks the end-of-archive blocks; tarfile
    and webdataset would read it up to the cut and stop without an error, losing its last records.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - END_OF_ARCHIVE))
        tail = f.read()
    if size % 512 or size < END_OF_ARCHIVE or tail.strip(b"\0"):
        raise CorruptShardError(f"{path}: truncated tar shard ({size} bytes, no end-of-archive blocks{after}); "
                                "its last records are lost: rewrite it, or pass on_corrupt='skip'")


def stream_records(root: str | Path, split: str, shuffle: int = 0, seed: int = 0,
                   on_corrupt: OnCorrupt = "error", with_audio: bool = True) -> Iterator[AMTRecord]:
    """Stream a split's records with webdataset, shards split across DDP ranks and workers.

    Errors name the shard and record key; `on_corrupt="skip"` skips a bad record, or the rest of
    an unreadable shard, with a warning each. `with_audio=False` leaves each record's audio undecoded
    (`audio` None), for tasks that do not hear it.
    """
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"stream_records: on_corrupt={on_corrupt!r}, expected one of {ON_CORRUPT}")
    urls = []
    for path in shard_paths(root, split):
        try:
            check_complete(path)  # a cut shard would otherwise stream its first part without an error
        except CorruptShardError as err:
            if on_corrupt == "error":
                raise
            warnings.warn(f"stream_records(on_corrupt='skip'): skipped {err}", stacklevel=2)
            continue
        urls.append(str(path))

    def handler(err: Exception) -> bool:
        if isinstance(err, CorruptShardError):  # already named (webdataset passes it on to the outer handler)
            raise err
        # webdataset appends the shard url to a reading error's args, or tarfile names the file object
        url = next((u for u in urls if any(isinstance(a, str) and u in a for a in getattr(err, "args", ()))
                    or u in str(err)), "a shard (webdataset did not say which)")
        message = f"{url}: not a readable tar shard ({type(err).__name__}: {err.args[0] if err.args else err})"
        if on_corrupt == "error":
            raise CorruptShardError(message) from err
        warnings.warn(f"stream_records(on_corrupt='skip'): skipped the rest of {message}", stacklevel=2)
        return True

    ds = wds.WebDataset(urls, shardshuffle=len(urls) if shuffle else False, seed=seed, handler=handler,
                        nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker, empty_check=False)
    if shuffle:
        ds = ds.shuffle(shuffle, seed=seed)
    for sample in ds:
        where = f"{sample['__url__']} record {sample['__key__']}"
        try:
            if "json" not in sample:
                raise ValueError(f"{where}: no .json member")
            try:
                meta = json.loads(sample["json"])
            except ValueError as err:
                raise ValueError(f"{where}: .json is not valid JSON ({err})") from None
            n = meta.get("num_frames", 0) if isinstance(meta, dict) else 0
            missing = [k for k in range(n) if f"f{k}.jpg" not in sample]
            if missing:
                raise ValueError(f"{where}: frames {missing} missing, expected f0..f{n - 1}")
            frames = [decode_image(sample[f"f{k}.jpg"], f"{where} frame {k}", frame_member(sample["__key__"], k))
                      for k in range(n)]
            audio = None
            if isinstance(meta, dict) and has_audio(meta):
                if AUDIO_KEY not in sample:
                    raise ValueError(f"{where}: its .json says audio={AUDIO_KEY!r} but the {AUDIO_KEY} member is missing")
                audio = decode_audio(sample[AUDIO_KEY], f"{where} audio") if with_audio else None
            elif AUDIO_KEY in sample and isinstance(meta, dict) and "audio" not in meta:  # a bad flag: from_metadata says
                raise ValueError(f"{where}: an {AUDIO_KEY} member but its .json has no audio={AUDIO_KEY!r}")
            record = AMTRecord.from_metadata(meta, frames, where=where, audio=audio)
        except ValueError as err:
            if on_corrupt == "error":
                raise CorruptShardError(str(err)) from None
            warnings.warn(f"stream_records(on_corrupt='skip'): skipped {err}", stacklevel=2)
            continue
        yield record
