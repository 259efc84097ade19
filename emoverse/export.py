"""`emoverse export CKPT OUT`: merge LoRA into the model and write a folder `from_pretrained` loads.

Two exports: `export_trained` writes what a downstream user needs next to the base backbone; `export_merged`
(`emoverse export CKPT OUT`) writes a folder `transformers` loads with `from_pretrained`: the VLM's
own class for HF backbones, the causal LM plus projector and vision weights for composed ones.
Lightning `.ckpt` files remain the way to resume training (they also hold optimizer and
curriculum state).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from emoverse.module import EmoVerseModule

PROJECTOR_FILE = "projector.safetensors"
ADAPTER_DIR = "lora"


def export_trained(module: EmoVerseModule, out_dir: str | Path) -> Path:
    """Write `{out_dir}/lora/` (peft adapter, safetensors) and `{out_dir}/projector.safetensors`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    module.backbone.model.save_pretrained(out / ADAPTER_DIR, safe_serialization=True)
    projector = {k: v.detach().cpu().contiguous() for k, v in module.backbone.part("projector").state_dict().items()}
    save_file(projector, str(out / PROJECTOR_FILE))
    return out


def load_trained(module: EmoVerseModule, out_dir: str | Path) -> None:
    """Load an `export_trained` folder into `module` (built with the same backbone and LoRA settings)."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    src = Path(out_dir)
    for need in (src / ADAPTER_DIR, src / PROJECTOR_FILE):
        if not need.exists():
            raise FileNotFoundError(f"{need} is missing; expected the output of export_trained()")
    result = set_peft_model_state_dict(module.backbone.model, load_peft_weights(str(src / ADAPTER_DIR), device="cpu"))
    if result.unexpected_keys:
        raise ValueError(f"{src / ADAPTER_DIR}: adapter keys not in this model: {result.unexpected_keys[:5]}")
    module.backbone.part("projector").load_state_dict(load_file(str(src / PROJECTOR_FILE)))


def export_merged(module: EmoVerseModule, out_dir: str | Path) -> Path:
    """Merge LoRA into the language model and write a `from_pretrained` folder (safetensors only).

    The module's backbone is merged in place: export from a module you no longer train.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    module.backbone.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """`emoverse export CKPT OUT`: a training checkpoint → a merged model folder."""
    parser = argparse.ArgumentParser(prog="emoverse export", description=main.__doc__)
    parser.add_argument("ckpt", help="a checkpoint written by emoverse fit")
    parser.add_argument("out", help="the folder to write (created)")
    args = parser.parse_args(argv)
    if not Path(args.ckpt).is_file():
        raise FileNotFoundError(f"emoverse export: {args.ckpt} is not a file; expected a .ckpt written by emoverse fit")
    from emoverse.module import EmoVerseModule

    module = EmoVerseModule.load_from_checkpoint(args.ckpt, map_location="cpu", weights_only=False)
    print(f"emoverse export: wrote {export_merged(module, args.out)}")
    return 0
