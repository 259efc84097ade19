"""`Task`: what one affective task asks of a record and how its answer is read back."""

from __future__ import annotations

import random
import string
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from torchmetrics import Metric

from emoverse.data.record import AMTRecord


class Task(ABC):
    """One affective task. Subclasses set `name` and implement `has_label`, `query`, `response`, `parse`,
    `target`, `new_metric` and `update_metric`.

    Evaluation runs `parse` on each generation, then
    `update_metric(metric, predictions, [task.target(r) for r in records])` on a metric from
    `new_metric()`; `metric.compute()` gives flat `{name: Tensor}` scores including `unparsed`.

    Attributes:
        name: registry name ("msa", "mer", "fer", "eri", "ecpe").
        media: which frames the prompt shows: "video" (up to N frames) or "peak" (the peak frame).
        max_new_tokens: generation budget at evaluation.
    """

    name: ClassVar[str]
    media: ClassVar[Literal["video", "peak"]] = "video"
    max_new_tokens: int = 16

    @abstractmethod
    def has_label(self, record: AMTRecord) -> bool:
        """Whether `record` carries this task's label (the sampler pairs only such records)."""

    @abstractmethod
    def query(self, record: AMTRecord, rng: random.Random) -> str:
        """The prompt for `record` (no label needed); `rng` picks among prompt variants, if any."""

    @abstractmethod
    def response(self, record: AMTRecord) -> str:
        """The answer the model is trained to give for `record` (needs its label)."""

    def build(self, record: AMTRecord, rng: random.Random) -> tuple[str, str]:
        """(query, response) for a labelled `record`."""
        self.check_label(record)
        return self.query(record, rng), self.response(record)

    @abstractmethod
    def parse(self, text: str, record: AMTRecord | None = None) -> Any:
        """Read a prediction from generated `text`; `None` when it cannot be parsed."""

    @abstractmethod
    def target(self, record: AMTRecord) -> Any:
        """The JSON-able gold answer of `record` that `update_metric` scores predictions against.

        Raises:
            ValueError: `record` has no label for this task.
        """

    @abstractmethod
    def new_metric(self) -> Metric:
        """A fresh torchmetrics `Metric` whose `compute()` returns `dict[str, Tensor]`."""

    @abstractmethod
    def update_metric(self, metric: Metric, predictions: Sequence[Any], targets: Sequence[Any]) -> None:
        """Add `parse` outputs and `target` values to `metric` (from `new_metric`).

        `None` predictions (unparsable answers) count as wrong and in the metric's `unparsed`.

        Raises:
            ValueError: `predictions` and `targets` differ in length.
        """

    def parse_offline(self, text: str, target: Any) -> Any:
        """Parse `text` when only the JSON gold `target` is known (offline scoring, no record).

        The default ignores `target`; tasks whose parser uses the record override it.
        """
        return self.parse(text)

    def check_label(self, record: AMTRecord) -> None:
        """Raise `ValueError` unless `record` carries this task's label (`has_label`)."""
        if not self.has_label(record):
            raise ValueError(f"record {record.id!r} has no label for task {self.name!r}; pair it only with tasks whose has_label() is true")


def check_template(template: str, owner: str, allowed: frozenset[str], required: frozenset[str] = frozenset()) -> str:
    """Validate a prompt template's `{placeholders}`.

    Args:
        template: a `str.format` template.
        owner: `"<Task>.template"`, for the error message.
        allowed: placeholders the task fills.
        required: placeholders that must appear.

    Returns:
        `template`, unchanged.
    """
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"{owner}: not a valid str.format template ({err})") from None
    if not fields <= allowed or not required <= fields:
        raise ValueError(f"{owner}: placeholders {sorted(fields)}; expected {sorted(required)} and optionally {sorted(allowed - required)}")
    return template
