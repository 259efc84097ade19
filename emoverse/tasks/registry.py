"""Task registry: `register_task` (a class decorator) and `get_task(name)`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from emoverse.tasks.base import Task, check_length_penalty, check_media

_TASKS: dict[str, type[Task]] = {}
T = TypeVar("T", bound=type[Task])


def register_task(cls: T) -> T:
    """Register a `Task` subclass under its `name`; a second class with the same name is an error."""
    name = cls.name
    if name in _TASKS and _TASKS[name] is not cls:
        raise ValueError(f"task {name!r} is already registered by {_TASKS[name].__qualname__}")
    _TASKS[name] = cls
    return cls


def get_task(name: str, media: Sequence[str] | None = None, length_penalty: float | None = None,
             **kwargs: Any) -> Task:
    """Build the registered task `name` (kwargs go to its constructor, e.g. a prompt template).

    Args:
        media: what its prompts show (`Task.media`: "frames", "video", "audio"); None keeps the task's default.
        length_penalty: subtracted from its reward per word of the answer (`Task.length_penalty`); None: off.
    """
    try:
        cls = _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(_TASKS)}") from None
    task = cls(**kwargs)
    task.media = check_media(task.media if media is None else media, f"task {name!r}")
    if length_penalty is not None:
        task.length_penalty = check_length_penalty(length_penalty, f"task {name!r}")
    return task


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_TASKS)
