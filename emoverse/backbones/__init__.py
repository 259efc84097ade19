"""Backbones: the `Backbone` contract, the registry and the registered presets."""

from emoverse.backbones import presets, tiny, tiny_audio, tiny_hf, tiny_hf_families, tiny_hf_gemma3n  # noqa: F401  (registers)
from emoverse.backbones.base import Backbone, BackboneProcessor
from emoverse.backbones.causal_lm import CausalLMBackbone
from emoverse.backbones.composed import ComposedBackbone
from emoverse.backbones.hf_vlm import HFVisionLanguageBackbone
from emoverse.backbones.registry import create_backbone, list_backbones, register_backbone

__all__ = ["Backbone", "BackboneProcessor", "CausalLMBackbone", "ComposedBackbone", "HFVisionLanguageBackbone", "create_backbone",
           "list_backbones", "register_backbone"]
