"""What `emoverse` says and leaves (issue 24): one-line errors that keep the message naming the file, record,
member or config key; no `version_N` folder from a start that fails or from a DDP run's other ranks; a
`--help` that needs no torch."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import UnidentifiedImageError

from emoverse.checkpointing import RunFolder
from emoverse.cli import main
from emoverse.cli_checks import UserError, one_line
from emoverse.data import make_demo_amt
from emoverse.data.shards import CorruptShardError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "configs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small_demo")
    make_demo_amt(path, seed=0, audio_seconds=None)  # the quickstart curriculum needs its 500 stage-1 records
    return path


def copy_amt(src: Path, dst: Path) -> Path:
    for shard in src.rglob("*"):
        if shard.is_file():
            (dst / shard.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / shard.relative_to(src)).write_bytes(shard.read_bytes())
    return dst


def replace_frames(shard: Path, data: bytes) -> None:
    """Replace every frame of `shard` by `data` (random bytes, as a broken disk leaves it)."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    with tarfile.open(shard, "w") as tar:
        for m, content in members:
            content = data if m.name.endswith(".jpg") else content
            m.size = len(content)
            tar.addfile(m, io.BytesIO(content))


def fit(data: Path, root: Path, *extra: str) -> int:
    return main(["fit", "--config", str(QUICKSTART), "--data.init_args.path", str(data),
                 "--trainer.logger.init_args.save_dir", str(root), "--trainer.max_steps", "2",
                 "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
                 "--trainer.enable_progress_bar", "false", *extra])


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("emoverse fit:")]
    assert len(lines) == 1, lines
    return lines[0]


# one-line errors ------------------------------------------------------------------------------------


def test_one_line_keeps_the_outermost_message_that_names_something() -> None:
    def chain(outer: BaseException, inner: BaseException) -> BaseException:
        outer.__cause__ = inner
        return outer

    shard = chain(CorruptShardError("/d/amt-train-000001.tar: not a readable tar shard (ReadError: unexpected end of "
                                    "data at member r4.audio.flac, record r4)"), tarfile.ReadError("unexpected end of data"))
    assert one_line(shard).startswith("/d/amt-train-000001.tar: not a readable tar shard")
    frame = chain(ValueError("/d/a.tar record r2 frame 0: not a decodable image"),
                  UnidentifiedImageError("cannot identify image file <_io.BytesIO object at 0x7f4b>"))
    assert one_line(frame) == "/d/a.tar record r2 frame 0: not a decodable image"
    # a wrapper that only repeats what its cause names (jsonargparse's) gives way to the cause
    wrapped = chain(ValueError("Does not validate against any of the Union subtypes\nSubtypes: [<class "
                               "'emoverse.module.EmoVerseModule'>]\nErrors:\n  - model.init_args.lr=-1: expected > 0"),
                    ValueError("model.init_args.lr=-1: expected > 0"))
    assert one_line(wrapped) == "model.init_args.lr=-1: expected > 0"
    # nothing named anywhere: the innermost message, as before
    assert one_line(chain(RuntimeError("wrapper"), KeyError("unknown backbone 'x'"))) == "unknown backbone 'x'"
    assert one_line(chain(UserError("--ckpt_path last: none"), ValueError("inner")), stop=(UserError,)) == "--ckpt_path last: none"


def test_random_bytes_for_frames_name_shard_record_and_member(small_demo: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMOVERSE_DEBUG", raising=False)
    data = copy_amt(small_demo, tmp_path / "amt")
    shard = sorted((data / "train").glob("*.tar"))[0]
    replace_frames(shard, os.urandom(3000))
    assert fit(data, tmp_path / "runs") == 1
    line = error_line(capsys)
    named = re.search(rf"{re.escape(str(shard))} record (\S+) frame (\d+): .*member (\S+)\.f(\d+)\.jpg", line)
    assert named and named[1] == named[3] and named[2] == named[4], line  # shard, record and its member
    assert "BytesIO" not in line and "UnidentifiedImageError" not in line
    assert not list((tmp_path / "runs").rglob("version_*"))  # a failed start leaves no run folder


def test_a_shard_cut_mid_member_names_the_file_on_the_command_line(small_demo: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMOVERSE_DEBUG", raising=False)
    data = copy_amt(small_demo, tmp_path / "amt")
    shard = sorted((data / "train").glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert fit(data, tmp_path / "runs") == 1
    line = error_line(capsys)
    assert f"{shard}: " in line and "at member" in line, line
    assert not line.startswith("emoverse fit: ReadError")
    assert not list((tmp_path / "runs").rglob("version_*"))


def test_a_negative_lr_names_its_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMOVERSE_DEBUG", raising=False)
    assert fit(tmp_path / "unused", tmp_path / "runs", "--model.init_args.lr", "-0.002") == 1
    assert error_line(capsys) == "emoverse fit: model.init_args.lr=-0.002: expected a finite learning rate > 0 (the paper's is 1e-5)"
    assert not list((tmp_path / "runs").rglob("version_*"))


# run folders ---------------------------------------------------------------------------------------------


def test_a_refused_max_epochs_leaves_no_version_folder(small_demo: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert fit(small_demo, tmp_path, "--trainer.max_epochs", "1", "--trainer.max_steps", "-1") == 1
    assert "set max_epochs=6" in error_line(capsys)
    assert not list(tmp_path.rglob("version_*"))


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_zero_claims_a_run_folder(small_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            rank: int) -> None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from emoverse import AMTDataModule, EmoVerseModule
    from emoverse.cli import EmoVerseCLI, cli_kwargs

    monkeypatch.setattr(rank_zero_only, "rank", rank)  # rank 1: the second process of a DDP run, before its Trainer
    cli = EmoVerseCLI(EmoVerseModule, AMTDataModule, run=False, save_config_kwargs={"overwrite": True}, **cli_kwargs(),
                      args=["--config", str(QUICKSTART), "--data.init_args.path", str(small_demo),
                            "--trainer.logger.init_args.save_dir", str(tmp_path)])
    claimed = sorted(p.name for p in tmp_path.rglob("version_*"))
    assert claimed == (["version_0"] if rank == 0 else [])
    assert (cli.run_folder.path is not None) == (rank == 0)


def test_run_folder_release_keeps_results(tmp_path: Path) -> None:
    folder = RunFolder()
    assert folder.claim(tmp_path, rank=1) is None and not list(tmp_path.iterdir())
    assert folder.claim(tmp_path, rank=0) == 0
    (tmp_path / "version_0" / "config.yaml").write_text("x")
    (tmp_path / "version_0" / "checkpoints").mkdir()
    assert folder.release() and not (tmp_path / "version_0").exists()
    assert folder.claim(tmp_path, rank=0) == 0
    (tmp_path / "version_0" / "checkpoints").mkdir()
    (tmp_path / "version_0" / "checkpoints" / "last.ckpt").write_text("x")
    assert not folder.release() and (tmp_path / "version_0" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_a_ddp_run_leaves_one_version_folder(small_demo: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "emoverse.cli", "fit", "--config", str(QUICKSTART), "--data.init_args.path", str(small_demo),
         "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.devices", "2", "--trainer.strategy", "ddp",
         "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
         "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]


# help ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["score", "--help"], ["report", "--help"], ["collect", "--help"],
                                  ["export", "--help"], ["smoke", "--help"]])
def test_help_imports_no_torch(args: list[str]) -> None:
    code = ("import sys\nfrom emoverse.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'lightning', 'transformers', 'timm', 'peft', 'matplotlib'}))")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout[-2000:]
    assert "usage" in done.stdout.lower()


def test_a_wrapper_dumping_its_given_value_does_not_win() -> None:
    inner = KeyError("unknown backbone 'tinyy'; registered backbones: ['tiny']")
    outer = ValueError("Does not validate against any of the Union subtypes\nErrors:\n  - unknown backbone 'tinyy'\n"
                       "Given value: {'backbone': 'tinyy', 'predictions_path': 'runs/x/preds.jsonl'}")
    outer.__cause__ = inner
    assert one_line(outer) == "unknown backbone 'tinyy'; registered backbones: ['tiny']"


def test_help_summaries_come_from_the_package_not_sys_path(tmp_path: Path) -> None:
    """An editable or wheel install need not put the package's parent on `sys.path`: the command list
    still reads every tool's summary (it read "(emoverse.scoring is not installed)" under an editable install)."""
    import emoverse.cli as cli

    code = (f"import sys\nsys.path[:] = [p for p in sys.path if p not in ('', {str(REPO)!r})]\n"
            f"import importlib.util\nspec = importlib.util.spec_from_file_location('emoverse.cli', {cli.__file__!r})\n"
            "mod = importlib.util.module_from_spec(spec)\nsys.modules['emoverse.cli'] = mod\n"
            "spec.loader.exec_module(mod)\nprint(mod.describe_commands())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not installed" not in done.stdout, done.stdout
    assert "\n  analyze " in done.stdout
