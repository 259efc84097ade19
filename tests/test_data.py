"""AMT records, shards (write, index, stream), the demo AMT and bad input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from emoverse.data import AMTLabels, AMTRecord, ShardIndex, make_demo_amt, stream_records, write_shards
from emoverse.data.dataset import select_frames
from emoverse.tasks import get_task, list_tasks


def _record(i: int, frames: int = 2) -> AMTRecord:
    return AMTRecord(id=f"r{i}", source="meld", split="train", text=f"utterance {i}",
                     labels=AMTLabels(emotion="joy", sentiment=1.5), speaker="Joey",
                     frames=[Image.new("RGB", (16, 16), (i * 20 % 255, 0, 0)) for _ in range(frames)], peak_frame=0)


def test_shards_round_trip_by_index_and_stream(tmp_path: Path) -> None:
    records = [_record(i, frames=i % 3 + 1) for i in range(7)]
    paths = write_shards(records, tmp_path, "train", maxcount=3)
    assert len(paths) == 3
    index = ShardIndex(tmp_path, "train")
    assert [index.record(i, with_frames=False).id for i in range(len(index))] == [r.id for r in records]
    back = index.record(5)
    assert back.metadata() == records[5].metadata()
    assert len(back.frames) == 3 and back.frames[0].size == (16, 16)
    streamed = {r.id: r for r in stream_records(tmp_path, "train")}
    assert set(streamed) == {r.id for r in records}
    assert streamed["r4"].metadata() == records[4].metadata()


def test_demo_amt_is_deterministic_and_covers_every_task(tmp_path: Path) -> None:
    a = make_demo_amt(tmp_path / "a", seed=3, num_monologues=40, num_dialogues=10)
    b = make_demo_amt(tmp_path / "b", seed=3, num_monologues=40, num_dialogues=10)
    assert a == b
    for split in ("train", "val", "test"):
        ia, ib = ShardIndex(tmp_path / "a", split), ShardIndex(tmp_path / "b", split)
        assert [e.meta for e in ia.entries] == [e.meta for e in ib.entries]
        assert ia._read(0, *ia.entries[0].frames[0]) == ib._read(0, *ib.entries[0].frames[0])
    records = [ShardIndex(tmp_path / "a", "train").record(i, False) for i in range(a["splits"]["train"]["records"])]
    for name in list_tasks():
        assert any(get_task(name).has_label(r) for r in records), f"demo has no {name} record"
    other = make_demo_amt(tmp_path / "c", seed=4, num_monologues=40, num_dialogues=10)
    assert other["splits"] != a["splits"] or ShardIndex(tmp_path / "c", "train").entries[0].meta != records[0].metadata()


def test_demo_ecpe_causes_precede_or_are_the_reaction(tmp_path: Path) -> None:
    make_demo_amt(tmp_path, seed=0, num_monologues=0, num_dialogues=12)
    index = ShardIndex(tmp_path, "train")
    pairs = [p for i in range(len(index)) for p in index.record(i, False).labels.cause_pairs or []]
    assert pairs and all(c <= e for e, c, _ in pairs)


def test_record_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="record x: labels.emotion='happy', expected one of"):
        AMTRecord(id="x", source="meld", split="train", text="t", labels=AMTLabels(emotion="happy"))
    with pytest.raises(ValueError, match=r"labels.sentiment=4.0, expected a float in \[-3, 3\]"):
        AMTRecord(id="x", source="mosei", split="train", text="t", labels=AMTLabels(sentiment=4.0))
    with pytest.raises(ValueError, match="'.' and '/' are not allowed"):
        AMTRecord(id="a.b", source="mosei", split="train", text="t")


def test_bad_metadata_names_file_and_field(tmp_path: Path) -> None:
    write_shards([_record(0)], tmp_path, "train")
    with pytest.raises(ValueError, match=r"shard.tar record r0: bad AMT record metadata .*mood"):
        AMTRecord.from_metadata({**_record(0).metadata(), "mood": "x"}, where="shard.tar record r0")


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_stray_member_and_missing_frame_are_reported(tmp_path: Path) -> None:
    meta = json.dumps({**_record(0).metadata()}).encode()
    (tmp_path / "train").mkdir()
    _tar(tmp_path / "train" / "a.tar", {"r0.json": meta, "r0.f0.jpg": b"x", "r0.notes.txt": b"?"})
    with pytest.raises(ValueError, match=r"a.tar: member 'r0.notes.txt'; expected"):
        ShardIndex(tmp_path, "train")
    _tar(tmp_path / "train" / "a.tar", {"r0.json": meta, "r0.f0.jpg": b"x"})  # num_frames is 2
    with pytest.raises(ValueError, match=r"a.tar record r0: frames \[0\], expected f0..f1"):
        ShardIndex(tmp_path, "train")


def test_corrupt_frame_names_record_and_frame(tmp_path: Path) -> None:
    meta = json.dumps({**_record(0, frames=1).metadata()}).encode()
    (tmp_path / "train").mkdir()
    _tar(tmp_path / "train" / "a.tar", {"r0.json": meta, "r0.f0.jpg": b"not a jpeg"})
    with pytest.raises(ValueError, match="a.tar record r0 frame 0: not a decodable image"):
        ShardIndex(tmp_path, "train").record(0)


def test_missing_split_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no AMT shards for split 'val'"):
        ShardIndex(tmp_path, "val")


def test_frame_selection() -> None:
    rec = _record(0, frames=8)
    rec.peak_frame = 5
    assert select_frames(rec, "peak", 4) == [rec.frames[5]]
    assert select_frames(rec, "video", 4) == [rec.frames[1], rec.frames[3], rec.frames[5], rec.frames[7]]
    rec.frames = []
    with pytest.raises(ValueError, match="record r0: no frames"):
        select_frames(rec, "video", 4)


def test_duplicate_record_ids_are_errors(tmp_path: Path) -> None:
    write_shards([_record(0), _record(1)], tmp_path / "a", "train")
    write_shards([_record(0)], tmp_path / "a" / "extra", "train")
    (tmp_path / "a" / "extra" / "train" / "amt-train-000000.tar").rename(tmp_path / "a" / "train" / "zz.tar")
    with pytest.raises(ValueError, match=r"record id 'r0' appears twice: in .*amt-train-000000.tar and .*zz.tar"):
        ShardIndex(tmp_path / "a", "train")
    meta = json.dumps(_record(0, frames=0).metadata()).encode()
    (tmp_path / "b" / "train").mkdir(parents=True)
    _tar(tmp_path / "b" / "train" / "x.tar", {"r0.json": meta, "r0/../r0.json": meta})
    with pytest.raises(ValueError, match="x.tar: record key 'r0' appears twice"):
        ShardIndex(tmp_path / "b", "train")
