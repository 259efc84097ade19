"""Backbone registry: presets are plain functions decorated with `@register_backbone` (timm style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from emoverse.backbones.base import Backbone

_PRESETS: dict[str, Callable[..., Backbone]] = {}
F = TypeVar("F", bound=Callable[..., Backbone])


def register_backbone(fn: F) -> F:
    """Register a preset function under its name; `create_backbone(name, **overrides)` calls it."""
    name = fn.__name__
    if name in _PRESETS and _PRESETS[name] is not fn:
        raise ValueError(f"backbone {name!r} is already registered by {_PRESETS[name].__module__}")
    _PRESETS[name] = fn
    return fn


def create_backbone(name: str, **overrides: Any) -> Backbone:
    """Build the registered backbone `name`; keyword overrides go to its preset function.

    Raises:
        KeyError: for an unknown name, listing the registered ones.
    """
    try:
        preset = _PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; registered backbones: {list_backbones()}") from None
    return preset(**overrides)


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching the shell-style `pattern`, sorted."""
    from fnmatch import fnmatch

    return sorted(n for n in _PRESETS if fnmatch(n, pattern))
