"""`emoverse export CKPT OUT`: merge LoRA into the model and write a folder `from_pretrained` loads.

Two exports: `export_trained` writes what a downstream user needs next to the base backbone; `export_merged`
(`emoverse export CKPT OUT`) writes a folder `transformers` loads with `from_pretrained`: the VLM's
own class for HF backbones, the causal LM plus projector and vision weights for composed ones, with
`composed.json` naming the timm encoder, its arguments and the projector (and, for a composed backbone that
hears, the speech encoder's `from_pretrained` folder `audio/`, its class and its projector), so
`load_composed(folder)` rebuilds the whole model from the folder alone. Lightning `.ckpt` files remain the way to resume
training (they also hold optimizer and curriculum state); they are read with `weights_only=True`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emoverse.backbones import ComposedBackbone
    from emoverse.module import EmoVerseModule

PROJECTOR_FILE = "projector.safetensors"
VISION_FILE = "vision.safetensors"
COMPOSED_CONFIG = "composed.json"
COMPOSED_FORMAT = "emoverse-composed/1"
ADAPTER_DIR = "lora"
AUDIO_DIR = "audio"
AUDIO_PROJECTOR_FILE = "audio_projector.safetensors"


def export_trained(module: EmoVerseModule, out_dir: str | Path) -> Path:
    """Write `{out_dir}/lora/` (peft adapter, safetensors) and `{out_dir}/projector.safetensors` (where the backbone
    has a projector)."""
    from safetensors.torch import save_file  # imported here: `emoverse export --help` stays light

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    module.backbone.model.save_pretrained(out / ADAPTER_DIR, safe_serialization=True)
    if "projector" in module.backbone.part_paths():  # a text-only backbone has none
        projector = {k: v.detach().cpu().contiguous() for k, v in module.backbone.part("projector").state_dict().items()}
        save_file(projector, str(out / PROJECTOR_FILE))
    return out


def load_trained(module: EmoVerseModule, out_dir: str | Path) -> None:
    """Load an `export_trained` folder into `module` (built with the same backbone and LoRA settings)."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from safetensors.torch import load_file

    src = Path(out_dir)
    projector = "projector" in module.backbone.part_paths()
    for need in (src / ADAPTER_DIR, *([src / PROJECTOR_FILE] if projector else [])):
        if not need.exists():
            raise FileNotFoundError(f"{need} is missing; expected the output of export_trained()")
    result = set_peft_model_state_dict(module.backbone.model, load_peft_weights(str(src / ADAPTER_DIR), device="cpu"))
    if result.unexpected_keys:
        raise ValueError(f"{src / ADAPTER_DIR}: adapter keys not in this model: {result.unexpected_keys[:5]}")
    if projector:
        module.backbone.part("projector").load_state_dict(load_file(str(src / PROJECTOR_FILE)))


def export_merged(module: EmoVerseModule, out_dir: str | Path) -> Path:
    """Merge LoRA into the language model and write a `from_pretrained` folder (safetensors only).

    The module's backbone is merged in place: export from a module you no longer train.
    """
    from emoverse.backbones import ComposedBackbone

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    module.backbone.save_pretrained(out)
    if isinstance(module.backbone, ComposedBackbone):
        (out / COMPOSED_CONFIG).write_text(json.dumps(composed_config(module.backbone), indent=2) + "\n")
    return out


def composed_config(backbone: ComposedBackbone) -> dict[str, Any]:
    """What `composed.json` holds: the timm encoder (name and `create_model` arguments), the projector
    and the token layout, beside the LLM folder and the two safetensors files."""
    from emoverse.backbones.composed_audio import encoder_class_name

    args = backbone.build_args
    vision = backbone.part("vision")
    name = args["vision"] or (getattr(vision, "pretrained_cfg", None) or {}).get("architecture")
    projector = backbone.core.projector  # the vision projector (part("projector") also holds the audio one)
    last = projector if not hasattr(projector, "__getitem__") else projector[-1]
    first = projector if not hasattr(projector, "__getitem__") else projector[0]
    proc = backbone.processor
    cfg = getattr(vision, "pretrained_cfg", None) or {}
    audio = None
    if "audio" in backbone.part_paths():
        audio = {"folder": AUDIO_DIR, "class": encoder_class_name(backbone.part("audio")),
                 "projector_file": AUDIO_PROJECTOR_FILE, "tokens_per_second": args["audio_tokens_per_second"],
                 "audio_token": proc.audio_token}
    return {
        "format": COMPOSED_FORMAT,
        "llm": ".",  # AutoModelForCausalLM / AutoTokenizer folder: this one
        "vision": {"file": VISION_FILE, "timm_model": name,
                   # None: the backbone was given a timm model object, whose arguments timm does not keep
                   "timm_kwargs": args["vision_kwargs"] if args["vision"] else None,
                   "image_size": proc.image_size, "mean": list(cfg.get("mean", (0.5, 0.5, 0.5))),
                   "std": list(cfg.get("std", (0.5, 0.5, 0.5)))},
        "projector": {"file": PROJECTOR_FILE, "kind": args["projector"], "in_dim": first.in_features,
                      "out_dim": last.out_features},
        "pool": args["pool"], "image_token": proc.image_token, "tokens_per_image": proc.tokens_per_image,
        "audio": audio,
    }


def load_composed(folder: str | Path) -> ComposedBackbone:
    """Rebuild a composed backbone from an `export_merged` folder alone (timm, transformers, safetensors).

    Raises:
        FileNotFoundError: `composed.json` or a weights file is missing.
        ValueError: the config does not name the timm model's arguments (exported from a model object).
    """
    import timm
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emoverse.backbones import ComposedBackbone

    src = Path(folder)
    config_path = src / COMPOSED_CONFIG
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} is missing; expected a composed export written by emoverse export")
    config = json.loads(config_path.read_text())
    if config.get("format") != COMPOSED_FORMAT:
        raise ValueError(f"{config_path}: format={config.get('format')!r}; expected {COMPOSED_FORMAT!r}")
    vision_cfg = config["vision"]
    if vision_cfg["timm_kwargs"] is None:
        raise ValueError(f"{config_path}: vision.timm_kwargs is null (the backbone was built from a timm model "
                         f"object); rebuild {vision_cfg['timm_model']!r} with its arguments and load "
                         f"{src / vision_cfg['file']} into it")
    vision = timm.create_model(vision_cfg["timm_model"], pretrained=False, num_classes=0, **vision_cfg["timm_kwargs"])
    vision.load_state_dict(load_file(str(src / vision_cfg["file"])))
    llm = AutoModelForCausalLM.from_pretrained(src / config["llm"])
    tokenizer = AutoTokenizer.from_pretrained(src / config["llm"])
    sound: dict[str, Any] = {}
    if config.get("audio"):
        from transformers import AutoFeatureExtractor

        from emoverse.backbones.composed_audio import load_encoder_class

        audio_cfg = config["audio"]
        sound = {"audio": load_encoder_class(audio_cfg["class"]).from_pretrained(src / audio_cfg["folder"]),
                 "audio_feature_extractor": AutoFeatureExtractor.from_pretrained(src / audio_cfg["folder"]),
                 "audio_tokens_per_second": audio_cfg["tokens_per_second"]}
    backbone = ComposedBackbone(vision, llm, tokenizer, projector=config["projector"]["kind"], pool=config["pool"],
                                **sound)
    backbone.core.projector.load_state_dict(load_file(str(src / config["projector"]["file"])))
    if sound:
        backbone.core.audio_projector.load_state_dict(load_file(str(src / config["audio"]["projector_file"])))
    return backbone


def main(argv: list[str] | None = None) -> int:
    """`emoverse export CKPT OUT`: a training checkpoint → a merged model folder."""
    parser = argparse.ArgumentParser(prog="emoverse export", description=main.__doc__)
    parser.add_argument("ckpt", help="a checkpoint written by emoverse fit")
    parser.add_argument("out", help="the folder to write (created)")
    args = parser.parse_args(argv)
    if not Path(args.ckpt).is_file():
        raise FileNotFoundError(f"emoverse export: {args.ckpt} is not a file; expected a .ckpt written by emoverse fit")
    from emoverse.module import EmoVerseModule

    # weights_only: a checkpoint from emoverse fit holds tensors and plain containers only (the RNG
    # state is stored as tensors); one that needs more is refused by torch, naming the global
    module = EmoVerseModule.load_from_checkpoint(args.ckpt, map_location="cpu", weights_only=True)
    print(f"emoverse export: wrote {export_merged(module, args.out)}")
    return 0
