"""Export and load the trained weights as safetensors: the peft LoRA adapter plus the projector.

The export is what a downstream user needs next to the base backbone (the adapter loads with
`peft.PeftModel.from_pretrained` on the base LLM too); Lightning `.ckpt` files remain the way to
resume training, since they also hold optimizer and curriculum state.
"""

from __future__ import annotations

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
    module.backbone.llm.save_pretrained(out / ADAPTER_DIR, safe_serialization=True)
    projector = {k: v.detach().cpu().contiguous() for k, v in module.backbone.projector.state_dict().items()}
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
    result = set_peft_model_state_dict(module.backbone.llm, load_peft_weights(str(src / ADAPTER_DIR), device="cpu"))
    if result.unexpected_keys:
        raise ValueError(f"{src / ADAPTER_DIR}: adapter keys not in this model: {result.unexpected_keys[:5]}")
    module.backbone.projector.load_state_dict(load_file(str(src / PROJECTOR_FILE)))
