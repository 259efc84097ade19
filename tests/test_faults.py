"""Fault battery (docs/reliability.md): bad data, signals, kills, concurrent runs, bad score files, a quiet CLI.

Each test provokes one fault and asserts what the user sees: an error naming the file, record and
field, a skip with a count, a resumable checkpoint, or one line on stderr.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from PIL import Image

from emoverse.checkpointing import ResumableCheckpoint, TrainingInterrupted, claim_version, find_last_checkpoint
from emoverse.cli import TOOLS, TRAINER_COMMANDS, main
from emoverse.data import AMTLabels, AMTRecord, ShardIndex, stream_records, write_shards
from emoverse.data.shards import CorruptShardError
from emoverse.scoring import main as score_main
from emoverse.tasks import ECPE

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "configs" / "quickstart.yaml"


def record(i: int, **fields: Any) -> AMTRecord:
    base: dict[str, Any] = {"id": f"r{i}", "source": "meld", "split": "train", "text": f"utterance {i}",
                            "labels": AMTLabels(emotion="joy", sentiment=1.0),
                            "frames": [Image.new("RGB", (16, 16), (200, 30, 30))]}
    return AMTRecord(**{**base, **fields})


def shards(tmp_path: Path, n: int = 6, per_shard: int = 3) -> list[Path]:
    return write_shards([record(i) for i in range(n)], tmp_path, "train", maxcount=per_shard)


def rewrite_member(shard: Path, name: str, data: bytes) -> None:
    """Replace one member of a tar shard (as a broken writer or disk would leave it)."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    with tarfile.open(shard, "w") as tar:
        for m, content in members:
            content = data if m.name == name else content
            m.size = len(content)
            tar.addfile(m, io.BytesIO(content))


# bad shards --------------------------------------------------------------------------------------


def test_truncated_shard_names_the_file_or_is_skipped_with_a_count(tmp_path: Path) -> None:
    paths = shards(tmp_path)
    paths[1].write_bytes(paths[1].read_bytes()[: paths[1].stat().st_size // 2])
    with pytest.raises(CorruptShardError, match=rf"{paths[1].name}: (not a readable tar shard .*truncated|truncated tar shard)"):
        ShardIndex(tmp_path, "train")
    with pytest.warns(UserWarning, match=r"skipped 1 shard\(s\) and 0 record\(s\); kept 3 records"):
        index = ShardIndex(tmp_path, "train", on_corrupt="skip")
    assert [index.record(i, with_frames=False).id for i in range(len(index))] == ["r0", "r1", "r2"]
    assert index.skipped[0][0] == str(paths[1]) and index.skipped[0][1] is None
    with pytest.raises(CorruptShardError, match=paths[1].name):
        list(stream_records(tmp_path, "train"))


def _cut_inside(shard: Path, member: str, where: str) -> None:
    """Truncate `shard` inside `member`'s header or data, as a disk filling up mid-write leaves it."""
    with tarfile.open(shard) as tar:
        m = tar.getmember(member)
    cut = m.offset + 100 if where == "header" else m.offset_data + m.size // 2
    shard.write_bytes(shard.read_bytes()[:cut])


@pytest.mark.parametrize(("member", "where"), [("r4.json", "data"), ("r4.f0.jpg", "data"), ("r4.f0.jpg", "header"),
                                               ("r4.json", "header")])
def test_a_shard_cut_mid_member_names_the_file_and_last_record(tmp_path: Path, member: str, where: str) -> None:
    paths = shards(tmp_path)  # r3, r4, r5 in the second shard
    _cut_inside(paths[1], member, where)
    name = rf"{paths[1].name}: (not a readable tar shard|truncated tar shard) .*(at|after) member r[34]\."
    with pytest.raises(CorruptShardError, match=name):
        ShardIndex(tmp_path, "train")
    for policy in ("error", "skip"):  # the stream must not deliver the cut shard's first part silently
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                ids = [r.id for r in stream_records(tmp_path, "train", on_corrupt=policy)]
            except CorruptShardError as err:
                assert policy == "error" and str(paths[1]) in str(err) and "truncated" in str(err)
                continue
        assert policy == "skip" and ids == ["r0", "r1", "r2"]
        assert any(str(paths[1]) in str(w.message) for w in seen)


def test_a_shard_cut_after_indexing_names_file_record_and_frame(tmp_path: Path) -> None:
    paths = shards(tmp_path)
    index = ShardIndex(tmp_path, "train")
    _cut_inside(paths[0], "r2.f0.jpg", "data")
    assert index.record(1).id == "r1"
    with pytest.raises(CorruptShardError, match=rf"{paths[0].name} record r2 frame 0: .* bytes at offset .*truncated"):
        index.record(2)


def test_datamodule_on_corrupt_policy(tmp_path: Path, tiny_module: Any) -> None:
    from emoverse import AMTDataModule

    paths = write_shards([record(i, split="val") for i in range(4)], tmp_path, "val", maxcount=2)
    paths[0].write_bytes(b"not a tar at all")

    def data(policy: str) -> Any:
        return AMTDataModule(str(tmp_path), processor=tiny_module.processor, tasks=tiny_module.tasks, on_corrupt=policy)

    with pytest.raises(CorruptShardError, match=rf"{paths[0].name}: not a readable tar shard"):
        data("error").setup("validate")
    skipping = data("skip")
    with pytest.warns(UserWarning, match=r"skipped 1 shard\(s\)"):
        skipping.setup("validate")
    assert len(skipping.datasets["val"]) == 2


def test_invalid_json_names_file_and_key_or_is_skipped(tmp_path: Path) -> None:
    paths = shards(tmp_path)
    rewrite_member(paths[0], "r1.json", b'{"id": "r1", "source": ')
    with pytest.raises(CorruptShardError, match=rf"{paths[0].name} record r1: r1.json is not a valid AMT record"):
        ShardIndex(tmp_path, "train")
    with pytest.warns(UserWarning, match=r"skipped 0 shard\(s\) and 1 record\(s\); kept 5"):
        index = ShardIndex(tmp_path, "train", on_corrupt="skip")
    assert "r1" not in {index.record(i, with_frames=False).id for i in range(len(index))}
    with pytest.raises(CorruptShardError, match=rf"{paths[0].name} record r1: .json is not valid JSON"):
        list(stream_records(tmp_path, "train"))
    with pytest.warns(UserWarning, match="skipped .*record r1"):
        assert len(list(stream_records(tmp_path, "train", on_corrupt="skip"))) == 5


def test_out_of_range_label_in_a_shard_names_file_record_and_field(tmp_path: Path) -> None:
    paths = shards(tmp_path)
    meta = record(4).metadata()
    meta["labels"]["sentiment"] = 9.0
    rewrite_member(paths[1], "r4.json", json.dumps(meta).encode())
    with pytest.raises(CorruptShardError, match=rf"{paths[1].name} record r4: .*labels.sentiment=9.0, expected a float in \[-3, 3\]"):
        ShardIndex(tmp_path, "train")


# write-time validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"labels": AMTLabels(sentiment=9.0)}, r"record r0: labels.sentiment=9.0, expected a float in \[-3, 3\]"),
    ({"labels": AMTLabels(sentiment="high")}, r"labels.sentiment='high'"),
    ({"labels": AMTLabels(emotion="happy")}, r"labels.emotion='happy', expected one of"),
    ({"labels": AMTLabels(cause_pairs=[(2, 0, "joy")])}, r"labels.cause_pairs\[0\]=\(2, 0, 'joy'\)"),
    ({"source": "imdb"}, r"source='imdb', expected one of \('mosei', 'meld', 'ecf', 'demo'\)"),
    ({"split": "trian"}, r"split='trian', expected one of \('train', 'val', 'test'\)"),
    ({"text": ""}, r"record r0: text='', expected the utterance as a non-empty string"),
    ({"frames": [Image.new("I;16", (16, 16), 300)]}, r"record r0 frame 0: image mode 'I;16'; expected an 8-bit image"),
    ({"frames": [Image.new("F", (16, 16), 0.5)]}, r"frame 0: image mode 'F'"),
])
def test_invalid_records_are_rejected_when_built(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        record(0, **change)


def test_write_shards_rechecks_records_changed_after_construction(tmp_path: Path) -> None:
    bad = record(1)
    bad.labels.sentiment = 9.0  # dataclasses do not re-validate on assignment
    with pytest.raises(ValueError, match=r"record r1: labels.sentiment=9.0"):
        write_shards([record(0), bad], tmp_path, "train")
    sixteen = record(2)
    sixteen.frames = [Image.new("I;16", (8, 8), 40000)]
    with pytest.raises(ValueError, match=r"record r2 frame 0: image mode 'I;16'"):
        write_shards([sixteen], tmp_path, "train")
    with pytest.raises(ValueError, match=r"record r3: split='train' but it is written to the 'val' shards"):
        write_shards([record(3)], tmp_path, "val")
    with pytest.raises(ValueError, match=r"write_shards: split='trian'"):
        write_shards([], tmp_path, "trian")
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(ValueError, match=r"record r4 frame 0: PNG bytes; frames given as bytes must be JPEG"):
        write_shards([record(4, frames=[png.getvalue()])], tmp_path, "train")


def test_cmyk_frame_is_converted_to_its_rgb_colour(tmp_path: Path) -> None:
    rgb = Image.new("RGB", (16, 16), (200, 30, 30))
    write_shards([record(0, frames=[rgb.convert("CMYK")])], tmp_path, "train")
    back = ShardIndex(tmp_path, "train").record(0).frames[0]
    assert back.mode == "RGB"
    assert all(abs(a - b) <= 8 for a, b in zip(back.getpixel((8, 8)), (200, 30, 30)))  # JPEG tolerance


def test_sixteen_bit_frame_in_a_shard_is_named_on_read(tmp_path: Path) -> None:
    paths = shards(tmp_path, n=1)
    png = io.BytesIO()
    Image.new("I;16", (8, 8), 40000).save(png, format="PNG")
    rewrite_member(paths[0], "r0.f0.jpg", png.getvalue())
    with pytest.raises(ValueError, match=rf"{paths[0].name} record r0 frame 0: image mode 'I;16?'"):
        ShardIndex(tmp_path, "train").record(0)


def test_long_utterance_is_written_read_and_fits_the_context_or_is_named(tmp_path: Path, tiny_module: Any) -> None:
    from emoverse import AMTDataModule

    long = record(0, text="word " * 20_000, split="val")  # 100,000 characters
    write_shards([long], tmp_path, "val")
    assert len(ShardIndex(tmp_path, "val").record(0, with_frames=False).text) == 100_000
    data = AMTDataModule(str(tmp_path), eval_batch_size=1, num_frames=1, processor=tiny_module.processor,
                         tasks={"mer": tiny_module.tasks["mer"]})
    data.setup("validate")
    try:  # shortened to the context, or refused with the record named (never a bare tokenizer/model error)
        batch = next(iter(data.val_dataloader()))
    except ValueError as err:
        assert "record r0" in str(err) and "context" in str(err)
    else:
        assert batch.inputs["input_ids"].shape[1] <= tiny_module.processor.max_length


# ECPE: a pair about another utterance --------------------------------------------------------------


def test_ecpe_pair_about_another_turn_is_not_a_hit() -> None:
    task = ECPE()
    target_5 = {"dialogue_id": "d1", "turn": 5, "emotion": "joy", "pairs": [[5, 2, "joy"]]}
    target_3 = {"dialogue_id": "d1", "turn": 3, "emotion": "anger", "pairs": [[3, 1, "anger"]]}
    # asked about turn 5, the model answers with turn 3's gold pair; asked about turn 3, it says "no cause"
    answers = [task.parse_offline("3_anger,1", target_5), task.parse_offline("", target_3)]
    assert answers[0].pairs == () and answers[0].ignored == 1
    metric = task.new_metric()
    task.update_metric(metric, answers, [target_5, target_3])
    scores = metric.compute()
    assert scores["recall"] == 0 and scores["f1"] == 0 and scores["ignored_pairs"] == 1


# predict ------------------------------------------------------------------------------------------------


class FailAt(pl.Callback):
    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == self.batch:
            raise RuntimeError("disk full")


def test_predict_writes_ecpe_rows_and_never_a_complete_looking_partial_file(small_amt: Path, tmp_path: Path) -> None:
    from emoverse import AMTDataModule, EmoVerseModule
    from emoverse.prediction import JSONLPredictionWriter

    torch.manual_seed(0)
    module = EmoVerseModule("tiny", tasks=["ecpe"])
    data = AMTDataModule(str(small_amt), eval_batch_size=2, num_frames=1, processor=module.processor, tasks=module.tasks)

    def predict(path: Path, *callbacks: pl.Callback) -> Any:
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_predict_batches=1,
                             callbacks=[JSONLPredictionWriter(str(path)), *callbacks])
        return trainer.predict(module, datamodule=data)

    out = predict(tmp_path / "p.jsonl")  # crashed with "A frozen dataclass was passed to apply_to_collection"
    assert [r["task"] for batch in out for r in batch] == ["ecpe"] * 2
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["prediction"] is None or set(r["prediction"]) == {"pairs", "ignored"} for r in rows)
    with pytest.raises(RuntimeError, match="disk full"):
        predict(tmp_path / "q.jsonl", FailAt(batch=0))
    assert not (tmp_path / "q.jsonl").exists()
    assert len((tmp_path / "q.jsonl.partial").read_text().splitlines()) == 2  # the rows written, named partial


# score on bad files --------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    (b"", r"empty.jsonl: no prediction rows \(the file is empty\)"),
    (b"\n\n  \n", r"no prediction rows"),
    (b'{"id": "a", "task": "msa", "generation": "Positive.", "target": 1.0}\n{"id": "b", "task"\n',
     r"empty.jsonl:2: not valid JSON"),
    (b"\xff\xfe\x00binary", r"not UTF-8 text"),
])
def test_score_fails_clearly_on_empty_or_malformed_files(content: bytes, message: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    assert score_main([str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(message, captured.err), captured.err


def test_scoring_import_stays_light() -> None:
    code = ("import sys, emoverse.scoring; heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'lightning', 'timm', 'peft', 'webdataset', 'bitsandbytes'} | "
            "{m for m in sys.modules if m.startswith(('emoverse.backbones', 'emoverse.module', 'emoverse.data.datamodule'))}); "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    # transformers may still load: torchmetrics imports it (its BERTScore module) when it is installed
    assert out.stdout.strip() == "[]"


# CLI ------------------------------------------------------------------------------------------------


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in [*TRAINER_COMMANDS, *TOOLS, "score", "collect"]:
        assert f"\n  {name} " in out
    assert main([]) == 2


def test_unknown_backbone_is_one_line_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMOVERSE_DEBUG", raising=False)
    args = ["fit", "--config", str(QUICKSTART), "--model.init_args.backbone", "tinyy",
            "--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "unknown backbone 'tinyy'; registered backbones:" in err and "'tiny'" in err
    assert len([line for line in err.splitlines() if line.startswith("emoverse fit:")]) == 1
    with pytest.raises(ValueError, match="unknown backbone 'tinyy'"):
        main([*args, "--debug"])
    assert main(["fti"]) == 2 and "unknown command 'fti'" in capsys.readouterr().err


def test_quiet_filters_only_the_listed_noise() -> None:
    from emoverse._quiet import quiet_third_party

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)
        warnings.warn("The 'train_dataloader' does not have many workers", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["The 'train_dataloader' does not have many workers"]


def test_importing_the_module_prints_no_bitsandbytes_kernel_message() -> None:
    # peft imports bitsandbytes, which logs a failed optional-kernel load on CPUs with AVX512-BF16
    probe = "import emoverse.module, sys; print('bitsandbytes' in sys.modules)"
    env = {**os.environ, "EMOVERSE_DEBUG": ""}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "gemm_4bit_forward" not in done.stderr and "kernels-community" not in done.stderr


# run folders and checkpoints -------------------------------------------------------------------------


def test_concurrent_runs_never_share_a_version(tmp_path: Path) -> None:
    with multiprocessing.get_context("fork").Pool(4) as pool:  # runs racing for the next version_N
        versions = pool.map(claim_version, [str(tmp_path)] * 8)
    assert sorted(versions) == list(range(8))


def test_runs_get_their_own_version_and_last_resumes_the_newest(tmp_path: Path, demo_amt: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    def fit(*extra: str) -> int:
        return main(["fit", "--config", str(QUICKSTART), "--data.init_args.path", str(demo_amt),
                     "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0",
                     "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
                     "--trainer.logger.init_args.save_dir", str(tmp_path), *extra])

    root = tmp_path / "lightning_logs"
    assert fit("--ckpt_path", "last") == 1
    assert "--ckpt_path last: no checkpoint under" in capsys.readouterr().err
    assert fit("--trainer.max_steps", "3") == 0
    first = find_last_checkpoint(root)
    assert first is not None and first.name == "last.ckpt"
    assert torch.load(first, weights_only=True)["global_step"] == 3
    assert fit("--ckpt_path", "last", "--trainer.max_steps", "5") == 0
    assert f"resuming from {first}" in capsys.readouterr().err
    runs = sorted(p.name for p in root.iterdir())
    assert runs == ["version_0", "version_1"]  # the first and the resumed run (the refused one made none)
    final = find_last_checkpoint(root)
    assert final.parent.parent.name == "version_1" and torch.load(final, weights_only=True)["global_step"] == 5


def boring_trainer(root: Path, callbacks: list[pl.Callback], max_steps: int = 8) -> pl.Trainer:
    return pl.Trainer(default_root_dir=root, max_steps=max_steps, limit_train_batches=4, limit_val_batches=0,
                      callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False)


class SendSignal(pl.Callback):
    def __init__(self, signum: int, at_step: int) -> None:
        self.signum, self.at_step = signum, at_step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_writes_a_checkpoint_and_stops_non_zero(tmp_path: Path, signum: int, code: int) -> None:
    before = signal.getsignal(signum)
    checkpoint = ResumableCheckpoint(every_n_train_steps=0, keep_epoch_ends=False)
    with pytest.raises(TrainingInterrupted) as stop:
        boring_trainer(tmp_path, [checkpoint, SendSignal(signum, at_step=2)]).fit(BoringModel())
    assert stop.value.exit_code == code and stop.value.step == 3
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert signal.getsignal(signum) is before  # handlers restored


def test_interval_and_epoch_end_checkpoints(tmp_path: Path) -> None:
    checkpoint = ResumableCheckpoint(every_n_train_steps=3)
    boring_trainer(tmp_path, [checkpoint], max_steps=8).fit(BoringModel())
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 8
    assert find_last_checkpoint(folder) == folder / "last.ckpt"  # written after the epoch's kept copy


def test_kill_during_a_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = ResumableCheckpoint(every_n_train_steps=2, keep_epoch_ends=False)
    trainer = boring_trainer(tmp_path, [checkpoint], max_steps=2)
    trainer.fit(BoringModel())
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2

    def dies_half_way(checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(trainer.strategy.checkpoint_io, "save_checkpoint", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(trainer, "last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert find_last_checkpoint(tmp_path / "checkpoints") == last  # the partial file is never picked


# kill and resume mid-stage 2 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_amt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from emoverse.data import make_demo_amt

    path = tmp_path_factory.mktemp("small_amt")
    make_demo_amt(path, seed=0, num_monologues=40, num_dialogues=10, num_frames=2)
    return path


def m2se_fit(amt: Path, root: Path, extra: list[pl.Callback], ckpt_path: str | None = None) -> Any:
    """The tiny module with LoRA dropout (so resuming must restore the RNG) under a 2 + 2x3-step M2SE."""
    from emoverse import AMTDataModule, EmoVerseModule, MultiStageCurriculum, Stage
    from emoverse.curriculum import Curriculum

    curriculum = Curriculum([
        Stage(name="perception", ratios={"msa": 6, "fer": 3, "mer": 1}, budget=24, epochs=1, samples_per_epoch=8),
        Stage(name="reasoning", ratios={"mer": 3, "eri": 3, "ecpe": 3, "msa": 1}, epochs=2, samples_per_epoch=12)])
    torch.manual_seed(0)
    module = EmoVerseModule("tiny", lora_dropout=0.3, lr=1e-3, warmup_ratio=0.2, curriculum=curriculum)
    data = AMTDataModule(str(amt), batch_size=4, eval_batch_size=4, num_frames=2, seed=0,
                         processor=module.processor, tasks=module.tasks, curriculum=curriculum)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root,
                         reload_dataloaders_every_n_epochs=1,
                         callbacks=[MultiStageCurriculum(curriculum), ResumableCheckpoint(every_n_train_steps=0), *extra])
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


@pytest.fixture(scope="module")
def uninterrupted(small_amt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    return m2se_fit(small_amt, tmp_path_factory.mktemp("full"), []).trainable_state_dict()


# stage 2 is steps 3-8 (epochs of steps 3-5 and 6-8); the signal comes during step at_step + 1
@pytest.mark.parametrize("at_step", [3, pytest.param(4, marks=pytest.mark.slow)], ids=["mid-epoch", "epoch-end"])
def test_sigterm_mid_stage_two_then_resume_gives_the_uninterrupted_weights(
    small_amt: Path, tmp_path: Path, at_step: int, uninterrupted: dict[str, torch.Tensor]
) -> None:
    reference = uninterrupted
    with pytest.raises(TrainingInterrupted) as stop:
        m2se_fit(small_amt, tmp_path / "run", [SendSignal(signal.SIGTERM, at_step=at_step)])
    assert stop.value.step == at_step + 1 and stop.value.path == tmp_path / "run" / "checkpoints" / "last.ckpt"
    last = find_last_checkpoint(tmp_path / "run" / "checkpoints")
    resumed = m2se_fit(small_amt, tmp_path / "run", [], ckpt_path=str(last)).trainable_state_dict()
    assert reference.keys() == resumed.keys() and reference
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_emoverse_fit_killed_by_sigterm_resumes_with_ckpt_path_last(demo_amt: Path, tmp_path: Path) -> None:
    """The issue's scenario end to end: `emoverse fit` in a subprocess, SIGTERM mid-stage 2, `--ckpt_path last`."""
    args = [sys.executable, "-m", "emoverse.cli", "fit", "--config", str(QUICKSTART), "--data.init_args.path", str(demo_amt),
            "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(root: Path, *extra: str, kill_after: str | None = None) -> tuple[int, str]:
        cmd = [*args, "--trainer.logger.init_args.save_dir", str(root), *extra]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
        if kill_after is not None:  # SIGTERM as soon as that checkpoint exists, wherever the run is then
            while proc.poll() is None and not (root / "lightning_logs" / "version_0" / "checkpoints" / kill_after).exists():
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=600)
        return proc.returncode, err

    assert run(tmp_path / "full")[0] == 0
    # 3 batches an epoch: stage 1 is epochs 0-2 (steps 1-9), stage 2 epochs 3-5 (steps 10-18)
    code, err = run(tmp_path / "killed", kill_after="epoch=3-step=12.ckpt")
    assert code == 143 and "stopped by SIGTERM after step" in err and "resume with --ckpt_path last" in err
    code, err = run(tmp_path / "killed", "--ckpt_path", "last")
    assert code == 0 and "resuming from" in err
    want = torch.load(find_last_checkpoint(tmp_path / "full" / "lightning_logs"), weights_only=True)
    got = torch.load(find_last_checkpoint(tmp_path / "killed" / "lightning_logs"), weights_only=True)
    assert want["global_step"] == got["global_step"] == 18
    for name, value in want["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][name], value, rtol=0, atol=0, msg=name)
