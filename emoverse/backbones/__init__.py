"""Backbones: the `Backbone` contract, the registry and the registered presets."""

from emoverse.backbones import presets, tiny  # noqa: F401  (registers the presets)
from emoverse.backbones.base import Backbone, Processor
from emoverse.backbones.composed import ComposedBackbone
from emoverse.backbones.registry import create_backbone, list_backbones, register_backbone

__all__ = ["Backbone", "ComposedBackbone", "Processor", "create_backbone", "list_backbones", "register_backbone"]
