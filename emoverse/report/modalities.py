"""The modality ablation: one checkpoint's test metrics with every modality set it was tested on.

`emoverse test --ckpt_path C --data.init_args.drop_modalities [audio]` (or `[frames]`, `[text]`, or
none) leaves one run folder per modality set beside the others (CSVLogger's `version_N/`); a test
run's report finds its siblings that tested the same checkpoint and shows their headline metrics
side by side, one column per set.
"""

from __future__ import annotations

from pathlib import Path

from emoverse.report.run import Run, load_run


def modality_label(dropped: list[str]) -> str:
    """A column heading: "all modalities" or "without audio, text"."""
    return "all modalities" if not dropped else "without " + ", ".join(sorted(dropped))


def dropped_modalities(run: Run) -> list[str]:
    """The modalities the run's data left out (`AMTDataModule(drop_modalities=...)` in config.yaml)."""
    data = run.config.get("data")
    args = data.get("init_args") if isinstance(data, dict) else None
    dropped = args.get("drop_modalities") if isinstance(args, dict) else None
    return sorted(str(m) for m in dropped) if isinstance(dropped, list) else []


def modality_sets(run: Run) -> dict[str, dict[str, float]]:
    """`{modality set label: test metrics}` of every test run beside `run` (same parent folder) that tested
    the same checkpoint, `run` included; the newest run (highest `version_N`) wins for a set tested twice.

    A run that tested no checkpoint (`ckpt_path` unset) is compared with nothing but itself.
    """
    own = _checkpoint(run)
    found: dict[str, tuple[int, dict[str, float]]] = {}
    candidates = [run] if own is None else [run, *_siblings(run)]
    for other in candidates:
        if other is not run and _checkpoint(other) != own:
            continue
        metrics = other.last("test/")
        if not metrics:
            continue
        label, order = modality_label(dropped_modalities(other)), _version(other.path)
        if label not in found or order > found[label][0] or other is run and order == found[label][0]:
            found[label] = (order, metrics)
    return {label: found[label][1] for label in sorted(found, key=lambda s: (s != "all modalities", s))}


def _siblings(run: Run) -> list[Run]:
    parent = run.path.resolve().parent
    return [load_run(p, follow_checkpoint=False, predictions=False) for p in sorted(parent.iterdir())
            if p.is_dir() and p.resolve() != run.path.resolve() and (p / "metrics.csv").is_file()]


def _checkpoint(run: Run) -> Path | None:
    ckpt = run.config.get("ckpt_path")
    if not isinstance(ckpt, str) or not ckpt:
        return None
    path = Path(ckpt)
    return path.resolve() if path.is_absolute() else (Path.cwd() / path).resolve()


def _version(path: Path) -> int:
    suffix = path.name.rpartition("_")[2]
    return int(suffix) if suffix.isdigit() else -1
