"""Run reports: `emoverse report`, the `RunReport` callback, the per-task analyses and `emoverse collect`'s page."""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from emoverse.cli import main
from emoverse.curriculum import Curriculum, MultiStageCurriculum, Stage, TaskWeightedSampler
from emoverse.report import RunReport, write_report
from emoverse.report.analysis import ecpe_pairs, f1_scores, mer_confusion, msa_polarity, unparsed_counts
from emoverse.report.collect import write_collect_report
from emoverse.report.page import SECTIONS
from emoverse.report.run import load_run

REPO = Path(__file__).resolve().parents[1]
STAGES = [{"name": "perception", "ratios": {"msa": 6, "fer": 3, "mer": 1}, "budget": 40, "epochs": 1},
          {"name": "reasoning", "ratios": {"mer": 3, "eri": 3, "ecpe": 3, "msa": 1}, "budget": "remaining", "epochs": 2}]


class Page(HTMLParser):
    """A report page's section ids, image sources and "missing" notes."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.missing: list[str] = []
        self._in_missing = False
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a["id"])
        elif tag == "img":
            self.images.append(a["src"])
        self._in_missing = tag == "p" and a.get("class") == "missing"

    def handle_data(self, data: str) -> None:
        if self._in_missing:
            self.missing.append(data)
            self._in_missing = False


def check_page(path: Path) -> Page:
    """Every section is on the page and every image it shows is a non-empty PNG beside it."""
    page = Page(path)
    assert page.sections == list(SECTIONS)
    assert not [m for m in page.missing if "could not be drawn" in m]  # no section fell over
    for src in page.images:
        image = path.parent / src
        assert image.is_file() and image.stat().st_size > 1000, src
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return page


# a synthetic run folder ---------------------------------------------------------------------------

def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


PREDICTIONS = [
    {"id": "a", "task": "mer", "generation": "Joy.", "prediction": "joy", "target": "joy"},
    {"id": "b", "task": "mer", "generation": "Anger.", "prediction": "anger", "target": "joy"},
    {"id": "c", "task": "mer", "generation": "???", "prediction": None, "target": "sadness"},
    {"id": "d", "task": "mer", "generation": "Joy.", "prediction": "joy", "target": "joy"},
    {"id": "e", "task": "msa", "generation": "Positive.", "prediction": 1.0, "target": 1.4},
    {"id": "f", "task": "msa", "generation": "Positive.", "prediction": 1.0, "target": -0.6},
    {"id": "g", "task": "msa", "generation": "Negative.", "prediction": -1.0, "target": -2.0},
    {"id": "h", "task": "msa", "generation": "", "prediction": None, "target": 0.0},
    {"id": "i", "task": "ecpe", "generation": "5_joy,3", "prediction": {"pairs": [[5, 3, "joy"]], "ignored": 0},
     "target": {"turn": 5, "emotion": "joy", "pairs": [[5, 3, "joy"], [5, 5, "joy"]]}},
    {"id": "j", "task": "ecpe", "generation": "4_anger,1", "prediction": {"pairs": [[4, 1, "anger"]], "ignored": 0},
     "target": {"turn": 4, "emotion": "anger", "pairs": [[4, 2, "anger"]]}},
    {"id": "k", "task": "fer", "generation": "Brow lowerer.", "prediction": "Brow lowerer.", "target": "Brow lowerer, lid tightener."},
    {"id": "l", "task": "eri", "generation": "He got the job.", "prediction": "He got the job.", "target": "He was promoted."},
]


def make_run(root: Path, stages_reached: int = 2, predictions: list[dict] | None = PREDICTIONS) -> Path:
    """A run folder as `emoverse fit` + `test` would leave it (metrics, config, draws, predictions)."""
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for step in range(0, 30 * stages_reached, 3):
        stage = step // 30
        rows.append({"epoch": step // 15, "step": step, "train/loss": 3.0 / (1 + step), "curriculum/stage": stage,
                     "train/msa/loss": 2.0 / (1 + step), "curriculum/msa_seen": step * 4})
        if step % 15 == 12:
            rows.append({"epoch": step // 15, "step": step, "val/msa/acc2_nn": 0.5 + step / 200, "val/mer/acc": 0.3,
                         "val/mer/unparsed": 2})
    rows.append({"epoch": 0, "step": 0, "test/msa/acc2_nn": 0.61, "test/mer/acc": 0.5, "test/mer/weighted_f1": 0.4,
                 "test/ecpe/f1": 0.25, "test/mer/unparsed": 1})
    write_csv(root / "metrics.csv", rows)
    config = {"curriculum": {"stages": STAGES},
              "model": {"init_args": {"backbone": "tiny"}}, "data": {"init_args": {"path": "data/amt", "demo": False}}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    draws = {"stages": STAGES, "epochs": [{"epoch": e, "stage": min(e, 1), "first_step": 15 * e,
                                           "drawn": {"msa": 36, "fer": 18, "mer": 6} if e == 0 else
                                           {"mer": 12, "eri": 12, "ecpe": 12, "msa": 4}}
                                          for e in range(stages_reached)]}
    (root / "curriculum.json").write_text(json.dumps(draws))
    if predictions is not None:
        with open(root / "test_predictions.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in predictions)
    return root


def test_a_grpo_stage_gets_its_own_figure(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    grpo = [{"epoch": 4, "step": 60 + k, "train/loss": 0.1, "train/grpo/reward": 0.2 + k / 20, "train/mer/reward": 0.3,
             "train/msa/reward": 0.1 + k / 10, "train/grpo/reward_std": 0.2, "train/grpo/kl": k / 100,
             "train/grpo/answer_length": 3.0, "train/grpo/unparsed": 0.1} for k in range(6)]
    write_csv(run / "metrics.csv", rows + grpo)
    page = check_page(write_report(run))
    assert "grpo" in {Path(src).stem for src in page.images}
    # a run without one says so in a plain line, not as a gap
    other = check_page(write_report(make_run(tmp_path / "sft")))
    assert "grpo" not in {Path(src).stem for src in other.images}
    assert "No reinforcement stage in this run" in (tmp_path / "sft" / "report.html").read_text()


def test_every_section_from_a_complete_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    page = check_page(write_report(run))
    names = {Path(src).stem for src in page.images}
    assert names == {"loss", "task_mix", "validation", "mer_confusion", "mer_f1", "msa", "ecpe_f1", "ecpe_distance"}
    text = (run / "report.html").read_text()
    assert "paper, Table 4 (EmoVerse-4B)" in text and "85.51" in text and "61.00" in text  # headline beside the paper
    assert "He got the job." in text and "He was promoted." in text  # ERI answer next to its reference
    # the only gap: two headline metrics the synthetic test did not log
    assert page.missing == ["not in this run's test metrics (no test pairs for the task?): "
                            "CMU-MOSEI Acc2 (N/P), ECF 2.0 W-F1"]


def test_demo_runs_are_not_put_beside_the_paper(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", predictions=[{**r, "id": f"demo-{r['id']}"} for r in PREDICTIONS])
    text = write_report(run).read_text()
    assert "85.51" not in text and "synthetic demo AMT" in text


# bad input ----------------------------------------------------------------------------------------

def test_folder_without_anything(tmp_path: Path) -> None:
    page = check_page(write_report(tmp_path))
    assert page.images == []
    joined = " ".join(page.missing)
    assert "no train/loss values" in joined and "no predictions file" in joined and "no test/" in joined


def test_run_stopped_in_stage_one(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", stages_reached=1)
    page = check_page(write_report(run))
    assert any("stopped in stage 1" in m for m in page.missing)
    assert "not reached" in (run / "report.html").read_text()


def test_malformed_predictions_and_a_task_without_pairs(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", predictions=[r for r in PREDICTIONS if r["task"] != "ecpe"])
    with open(run / "test_predictions.jsonl", "a") as f:
        f.write('{"id": "x", "task": "mer", "generation": \n')  # cut off mid-line
        f.write("[1, 2]\n")
        f.write(json.dumps({"id": "y", "task": "mer", "prediction": "joy", "target": {"odd": 1}}) + "\n")
    (run / "metrics.csv").write_text("step,train/loss\n1,2.0\n2,oops\n")
    page = check_page(write_report(run))
    joined = " ".join(page.missing)
    assert "no ecpe rows" in joined
    assert "1 mer row(s) skipped" in joined
    text = (run / "report.html").read_text()
    assert "2 malformed predictions line(s) skipped" in text and "test_predictions.jsonl:11, test_predictions.jsonl:12" in text
    assert "1 cell(s) that are not numbers were skipped (first: line 3 column &#x27;train/loss&#x27;)" in text


def test_odd_config_and_draws_files(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (run / "config.yaml").write_text("trainer: [1, 2]\nmodel: tiny\ndata: 3\n")
    (run / "curriculum.json").write_text("[]")
    page = check_page(write_report(run))
    text = (run / "report.html").read_text()
    assert "curriculum.json: expected a JSON object, found list" in text
    assert "loss" in {Path(s).stem for s in page.images}  # the curves do not need the config


def test_a_predict_file_has_no_targets(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", predictions=None)
    with open(run / "predictions.jsonl", "w") as f:
        f.writelines(json.dumps({k: v for k, v in r.items() if k != "target"}) + "\n" for r in PREDICTIONS)
    page = check_page(write_report(run))
    assert any("has no targets" in m for m in page.missing)


def test_a_test_run_takes_its_curves_from_the_checkpoints_fit_run(tmp_path: Path) -> None:
    fit_dir = make_run(tmp_path / "lightning_logs" / "version_0", predictions=None)
    (fit_dir / "checkpoints").mkdir()
    test_dir = tmp_path / "lightning_logs" / "version_1"
    test_dir.mkdir()
    write_csv(test_dir / "metrics.csv", [{"epoch": 0, "step": 0, "test/mer/acc": 0.5}])
    (test_dir / "config.yaml").write_text(yaml.safe_dump({"ckpt_path": str(fit_dir / "checkpoints" / "last.ckpt")}))
    run = load_run(test_dir)
    assert run.training is run.train and run.train.path == fit_dir
    page = check_page(write_report(test_dir))
    assert {"loss", "task_mix", "validation"} <= {Path(s).stem for s in page.images}


# analyses -----------------------------------------------------------------------------------------

def test_analyses_count_what_the_rows_say() -> None:
    mer = mer_confusion([r for r in PREDICTIONS if r["task"] == "mer"])
    joy = mer.labels.index("joy")
    assert mer.matrix[joy][mer.columns.index("joy")] == 2 and mer.matrix[joy][mer.columns.index("anger")] == 1
    assert mer.matrix[mer.labels.index("sadness")][mer.columns.index("unparsed")] == 1
    f1 = f1_scores(mer)
    assert f1["joy"] == pytest.approx(2 * 2 / (3 + 2)) and f1["anger"] == 0.0 and f1["sadness"] == 0.0
    assert f1["fear"] != f1["fear"]  # nan: neither gold nor answered

    msa = msa_polarity([r for r in PREDICTIONS if r["task"] == "msa"])
    assert msa.confusion.matrix == [[1, 1, 0], [0, 1, 1]]  # gold 0.0 counts as non-negative (Acc2 N/N)
    assert sorted(msa.correct_scores) == [-2.0, 1.4] and sorted(msa.wrong_scores) == [-0.6, 0.0]

    ecpe = ecpe_pairs([r for r in PREDICTIONS if r["task"] == "ecpe"])
    assert ecpe.hit_distances == [2] and sorted(ecpe.missed_distances) == [0, 2]
    assert ecpe.f1() == {"anger": 0.0, "joy": pytest.approx(2 / 3)}
    assert unparsed_counts(PREDICTIONS)["mer"] == (4, 1)


# the callback on a toy curriculum run ---------------------------------------------------------------

TASKS = ("msa", "fer", "mer", "eri", "ecpe")
RECORDS = [{TASKS[i % 5], TASKS[(i * 7) % 5]} for i in range(120)]


class PairDataset(Dataset):
    def __getitem__(self, item: tuple[int, str]) -> dict:
        record, task = item
        return {"x": torch.full((4,), record / 100.0), "task": task}

    def __len__(self) -> int:
        return len(RECORDS)


@dataclass
class ToyBatch:
    """A typed batch as RunReport reads one: its (record id, task) `draws`."""

    x: torch.Tensor
    draws: list[tuple[str, str]]

    def to(self, device: torch.device, non_blocking: bool = False) -> ToyBatch:
        return ToyBatch(self.x.to(device), self.draws)


def collate(items: list[dict]) -> ToyBatch:
    return ToyBatch(torch.stack([i["x"] for i in items]), [("r", i["task"]) for i in items])


class ToyData(pl.LightningDataModule):
    def __init__(self, curriculum: Curriculum) -> None:
        super().__init__()
        self.curriculum = curriculum

    def setup(self, stage: str) -> None:
        self.curriculum.bind(RECORDS, 1, 8)

    def train_dataloader(self) -> StatefulDataLoader:
        sampler = TaskWeightedSampler(self.curriculum, epoch=self.trainer.current_epoch)
        return StatefulDataLoader(PairDataset(), batch_size=8, sampler=sampler, collate_fn=collate)


class ToyModule(pl.LightningModule):
    def __init__(self, curriculum: Curriculum) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.curriculum = curriculum  # where RunReport reads the planned stages

    def set_trainable(self, parts: Collection[str]) -> list[nn.Parameter]:
        return []

    def training_step(self, batch: ToyBatch, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch.x).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_callback_records_every_draw_and_writes_the_report(tmp_path: Path) -> None:
    curriculum = Curriculum([Stage(**s) for s in STAGES], seed=3)
    trainer = pl.Trainer(max_epochs=3, callbacks=[MultiStageCurriculum(curriculum), RunReport()],
                         logger=CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu", devices=1, log_every_n_steps=5,
                         reload_dataloaders_every_n_epochs=1)
    trainer.fit(ToyModule(curriculum), datamodule=ToyData(curriculum))
    run_dir = Path(trainer.log_dir)
    draws = json.loads((run_dir / "curriculum.json").read_text())
    assert [s["name"] for s in draws["stages"]] == ["perception", "reasoning"]
    assert [(e["epoch"], e["stage"]) for e in draws["epochs"]] == [(0, 0), (1, 1), (2, 1)]
    assert draws["epochs"][0]["first_step"] == 0 and draws["epochs"][1]["first_step"] == 5  # 40 samples / 8
    for e in draws["epochs"]:  # every sample the training steps got, which is the sampler's quota per epoch
        assert e["drawn"] == curriculum.quotas(e["stage"])
    page = check_page(run_dir / "report.html")
    assert {"loss", "task_mix"} <= {Path(s).stem for s in page.images}


def test_resumed_runs_count_the_same_draws(tmp_path: Path) -> None:
    """Stopped in epoch 0 (step 3 of 5) or in epoch 1 (step 6), then resumed: curriculum.json is the uninterrupted one."""

    def run(name: str, ckpt: str | None = None, every_steps: int | None = None) -> list[dict]:
        curriculum = Curriculum([Stage(**s) for s in STAGES], seed=3)
        callbacks: list[pl.Callback] = [MultiStageCurriculum(curriculum), RunReport(on_fit=False)]
        if every_steps:
            callbacks.append(pl.callbacks.ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=every_steps,
                                                          save_top_k=-1, filename="{step}"))
        trainer = pl.Trainer(max_epochs=3, callbacks=callbacks, logger=CSVLogger(tmp_path, name=name),
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=bool(every_steps),
                             accelerator="cpu", devices=1, reload_dataloaders_every_n_epochs=1)
        trainer.fit(ToyModule(curriculum), datamodule=ToyData(curriculum), ckpt_path=ckpt)
        return json.loads((Path(trainer.log_dir) / "curriculum.json").read_text())["epochs"]

    full = run("full", every_steps=3)  # step 3: epoch 0 (5 batches), batch 3; step 6: epoch 1, batch 1
    assert run("in_epoch_0", ckpt=str(tmp_path / "ckpt" / "step=3.ckpt")) == full
    assert run("in_epoch_1", ckpt=str(tmp_path / "ckpt" / "step=6.ckpt")) == full


# commands and configs -------------------------------------------------------------------------------

def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "report.html")
    check_page(tmp_path / "out" / "report.html")
    assert main(["report", str(tmp_path / "nowhere")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_collect_draws_runs_beside_the_paper_rows(tmp_path: Path) -> None:
    rows = [{"run": "m2se", "msa/acc2_nn": 0.80, "mer/acc": 0.6}, {"run": "mine", "msa/acc2_nn": 0.7}]
    page = write_collect_report(rows, tmp_path)
    parsed = Page(page)
    assert sorted(Path(s).stem for s in parsed.images) == ["mer_acc", "msa_acc2_nn"]
    assert all((tmp_path / s).stat().st_size > 1000 for s in parsed.images)
    text = page.read_text()
    assert "80.00 (85.51)" in text and "60.00 (67.78)" in text and "Tables 3 and 5, M2SE" in text


def test_shipped_configs_turn_the_report_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shipped config, merged as its documented `emoverse fit` line merges it, has the callback."""
    from emoverse import AMTDataModule, EmoVerseModule
    from emoverse.cli import EmoVerseCLI, cli_kwargs

    class ParseOnly(EmoVerseCLI):
        def instantiate_classes(self) -> None:
            pass

    monkeypatch.setattr(sys, "argv", ["emoverse"])
    configs = sorted((REPO / "examples" / "configs").rglob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        files = re.search(r"emoverse fit((?:\s+--config\s+\S+?\.yaml)+)", path.read_text()).group(1).split()[1::2]
        args = [a for f in files for a in ("--config", str(REPO / f))]
        config = ParseOnly(EmoVerseModule, AMTDataModule, args=args, run=False, **cli_kwargs()).config
        names = [c.class_path for c in config.trainer.callbacks]
        assert names.count("emoverse.report.RunReport") == 1, (path, names)


@pytest.mark.slow
def test_report_of_a_short_real_run(tmp_path: Path) -> None:
    """The tiny model through two stages and a test: the fit and test pages have every section and image."""
    from emoverse import AMTDataModule, EmoVerseModule, make_demo_amt

    make_demo_amt(tmp_path / "amt", seed=0, num_monologues=40, num_dialogues=10)
    curriculum = Curriculum([
        Stage(name="perception", ratios={"msa": 6, "fer": 3, "mer": 1}, budget=24, epochs=1),
        Stage(name="reasoning", ratios={"mer": 3, "eri": 3, "ecpe": 3, "msa": 1}, samples_per_epoch=24, epochs=1)])
    torch.manual_seed(0)
    module = EmoVerseModule("tiny", lr=3e-3, curriculum=curriculum)
    data = AMTDataModule(str(tmp_path / "amt"), batch_size=8, eval_batch_size=16, max_eval_per_task=4,
                         processor=module.processor, tasks=module.tasks, curriculum=curriculum)
    kwargs = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
              "logger": CSVLogger(tmp_path / "runs"), "log_every_n_steps": 1}
    trainer = pl.Trainer(max_epochs=2, callbacks=[MultiStageCurriculum(curriculum), RunReport()],
                         enable_checkpointing=False, reload_dataloaders_every_n_epochs=1, **kwargs)
    trainer.fit(module, data)
    fit_page = check_page(Path(trainer.log_dir) / "report.html")
    assert {"loss", "task_mix", "validation"} <= {Path(s).stem for s in fit_page.images}

    tester = pl.Trainer(callbacks=[RunReport()], **kwargs)
    tester.test(module, data)
    test_page = check_page(Path(tester.log_dir) / "report.html")
    assert {"mer_confusion", "mer_f1", "msa"} <= {Path(s).stem for s in test_page.images}
    text = (Path(tester.log_dir) / "report.html").read_text()
    assert "synthetic demo AMT" in text and "<h3>FER" in text and "<h3>ERI" in text


class _Rank:
    """A trainer as one rank of two sees it; `log_dir` is a collective (a broadcast), so it is counted."""

    def __init__(self, rank: int, root: Path) -> None:
        self.is_global_zero, self.global_rank, self.world_size = rank == 0, rank, 1
        self.root, self.collectives = root, 0
        self.current_epoch, self.global_step, self.callbacks, self.default_root_dir = 0, 0, [], str(root)

    @property
    def log_dir(self) -> str:
        self.collectives += 1
        return str(self.root)


def test_every_rank_makes_the_same_collectives(tmp_path: Path) -> None:
    # rank 0 reading Trainer.log_dir in a rank-0-only branch hung every DDP run at its first epoch end
    ranks = [_Rank(r, tmp_path) for r in (0, 1)]
    module = nn.Linear(1, 1)
    module.device = torch.device("cpu")
    for trainer in ranks:
        report = RunReport()
        report.setup(trainer, module, "fit")
        report.on_train_epoch_start(trainer, module)
        report.on_train_batch_end(trainer, module, None, ToyBatch(torch.zeros(1), [("r", "msa")]), 0)
        report.on_train_epoch_end(trainer, module)
        report.on_fit_end(trainer, module)
    assert ranks[0].collectives == ranks[1].collectives
    assert json.loads((tmp_path / "curriculum.json").read_text())["epochs"][0]["drawn"] == {"msa": 1}


def test_modality_ablation_puts_the_sets_of_one_checkpoint_side_by_side(tmp_path: Path) -> None:
    logs = tmp_path / "lightning_logs"
    fit_dir = make_run(logs / "version_0")
    ckpt = str(fit_dir / "checkpoints" / "last.ckpt")
    tested = {1: ([], 0.70), 2: (["audio"], 0.55), 3: (["frames", "text"], 0.52), 4: (["audio"], 0.58)}
    for version, (dropped, acc2) in tested.items():
        run = logs / f"version_{version}"
        run.mkdir()
        write_csv(run / "metrics.csv", [{"epoch": 0, "step": 0, "test/msa/acc2_nn": acc2}])
        (run / "config.yaml").write_text(yaml.safe_dump({"ckpt_path": ckpt, "data": {"init_args": {
            "drop_modalities": dropped}}}))
    other = logs / "version_5"  # another checkpoint's test: not part of this ablation
    other.mkdir()
    write_csv(other / "metrics.csv", [{"epoch": 0, "step": 0, "test/msa/acc2_nn": 0.99}])
    (other / "config.yaml").write_text(yaml.safe_dump({"ckpt_path": str(tmp_path / "other.ckpt")}))

    check_page(write_report(logs / "version_2"))
    html_text = (logs / "version_2" / "report.html").read_text()
    section = html_text.split('id="modalities"')[1].split("</section>")[0]
    assert "all modalities" in section and "without audio" in section and "without frames, text" in section
    assert "70.00" in section and "58.00" in section and "52.00" in section  # the newest test of a set wins
    assert "55.00" not in section and "99.00" not in section
    assert "One modality set tested" not in section
    check_page(write_report(other))
    assert "One modality set tested" in (other / "report.html").read_text()


def test_the_run_table_names_the_checkpoint_read_and_written(tmp_path: Path) -> None:
    fit_dir = make_run(tmp_path / "lightning_logs" / "version_0", predictions=None)
    (fit_dir / "checkpoints").mkdir()
    (fit_dir / "checkpoints" / "epoch=1-step=9.ckpt").write_bytes(b"x")
    last = fit_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    text = write_report(fit_dir).read_text()
    assert f"wrote {last} (newest of 2)" in text and "<td>checkpoint</td><td>–</td>" not in text
    test_dir = tmp_path / "lightning_logs" / "version_1"
    test_dir.mkdir()
    (test_dir / "config.yaml").write_text(yaml.safe_dump({"ckpt_path": str(last)}))
    assert f"read {last}" in write_report(test_dir).read_text()
    assert "none read or written" in write_report(make_run(tmp_path / "bare", predictions=None)).read_text()
