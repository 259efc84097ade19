"""Backbone registry: presets are plain functions decorated with `@register_backbone` (timm style).

Presets of other packages join through the `emoverse.backbones` entry-point group: each entry names a
module that registers presets when imported, e.g. in the package's `pyproject.toml`

    [project.entry-points."emoverse.backbones"]
    my_backbones = "my_package.backbones"

The registry imports them the first time a name is not found (or on `list_backbones`), so
`backbone: my_preset` works in a YAML config and from the CLI without importing anything by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from emoverse.backbones.base import Backbone

_PRESETS: dict[str, Callable[..., Backbone]] = {}
F = TypeVar("F", bound=Callable[..., Backbone])
ENTRY_POINT_GROUP = "emoverse.backbones"
_entry_points_loaded = False


def load_entry_points() -> None:
    """Import every module of the `emoverse.backbones` entry-point group once (registering its presets).

    Raises:
        ImportError: an entry point's module fails to import, naming the entry point and its package.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as err:
            package = ep.dist.name if ep.dist is not None else "an installed package"
            raise ImportError(f"entry point {ep.name} = {ep.value!r} ({ENTRY_POINT_GROUP!r} group, from {package}) "
                              f"failed to import: {type(err).__name__}: {err}") from err
    _entry_points_loaded = True


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
    if name not in _PRESETS:
        load_entry_points()
    if name not in _PRESETS:
        raise KeyError(f"unknown backbone {name!r}; registered backbones: {list_backbones()} (presets of your own "
                       f"package register through the {ENTRY_POINT_GROUP!r} entry-point group, docs/backbones.md)")
    return _PRESETS[name](**overrides)


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching the shell-style `pattern`, sorted."""
    from fnmatch import fnmatch

    load_entry_points()
    return sorted(n for n in _PRESETS if fnmatch(n, pattern))
