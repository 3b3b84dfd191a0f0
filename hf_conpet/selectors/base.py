"""Selector base: who decides, for an input without a task id, which task modules answer it.

A selector is an `nn.Module` that grows with the stream (`add_task`) and turns a batch of prompts
into a `RoutingPlan`. The model asks it only when neither `task_ids` nor `routing_weights` are
given. Concrete selectors register themselves in `SELECTOR_CLASSES` by `kind`, which is what the
saved `selector/config.json` records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..layers import RoutingPlan

if TYPE_CHECKING:
    from ..model import ConPetModel

@dataclass
class TaskEndContext:
    """What a selector may use when a task's module has been trained (see `TaskSelector.end_task`)."""

    task_index: int
    train: Any  # datasets.Dataset: the finished task's training rows
    validation: Any  # datasets.Dataset: its validation rows (never test)
    memory: Any  # replay.ReplayMemory of the *older* tasks (the finished task is added after)
    encode: Callable[[Any], Iterator[dict[str, torch.Tensor]]]
    """Yields prompt-only batches of a Dataset: input_ids, attention_mask (= prompt mask), task_ids."""
    batch_size: int
    steps: int
    replay_ratio: float
    seed: int


SELECTOR_CLASSES: dict[str, type["TaskSelector"]] = {}


class TaskSelector(nn.Module):
    """Base class: routes a batch to task modules and grows one task at a time.

    `prompt_mask [batch, seq]` marks the tokens a selector may read (the prompt; never the answer).
    """

    kind: str = ""
    routes_in_training: bool = False
    """True when the model's training forward must route through `training_plan` (SAPT learns
    selection and task module together); False: training routes by task id (teacher forcing)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            SELECTOR_CLASSES[cls.kind] = cls

    @property
    def num_tasks(self) -> int:
        raise NotImplementedError

    def add_task(self, model: "ConPetModel") -> None:
        """Open an output for the task just added to `model` (old outputs stay bit-identical)."""
        raise NotImplementedError

    def task_probabilities(self, model: "ConPetModel", input_ids: torch.Tensor, prompt_mask: torch.Tensor | None) -> torch.Tensor:
        """[batch, T] probabilities over the registered tasks."""
        raise NotImplementedError

    def plan(self, model: "ConPetModel", input_ids: torch.Tensor, prompt_mask: torch.Tensor | None) -> RoutingPlan:
        """The routing plan for a batch; default: top-k of `task_probabilities`."""
        probabilities = self.task_probabilities(model, input_ids, prompt_mask)
        return RoutingPlan.top_k(probabilities, model.conpet_config.top_k)

    def training_plan(
        self, model: "ConPetModel", input_ids: torch.Tensor, prompt_mask: torch.Tensor, task_ids: torch.Tensor | None
    ) -> tuple[RoutingPlan, torch.Tensor | None]:
        """Plan (with gradient) and auxiliary loss for a training batch; only if `routes_in_training`."""
        raise NotImplementedError

    def end_task(self, model: "ConPetModel", context: TaskEndContext) -> dict[str, Any]:
        """Update the selector after a task's module is trained (ConPET: train the classifier on
        replay batches; SAPT: record the task's mean attention for reflection). Returns figures
        worth logging."""
        return {}

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable settings needed to rebuild this selector before loading its weights."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any], model: "ConPetModel") -> "TaskSelector":
        return cls(**config)


def pool_prompt(hidden: torch.Tensor, prompt_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the prompt tokens of [batch, seq, d] (padding and answer tokens excluded)."""
    if prompt_mask is None:
        return hidden.mean(dim=1)
    mask = prompt_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)



class SumSelector(TaskSelector):
    """Every task module at weight 1, in training and at inference: O-LoRA's "sum of LoRAs"."""

    kind = "sum"
    routes_in_training = True

    def __init__(self, num_tasks: int = 0):
        super().__init__()
        self._num_tasks = num_tasks

    @property
    def num_tasks(self) -> int:
        return self._num_tasks

    def add_task(self, model=None) -> None:
        self._num_tasks += 1

    def _weights(self, input_ids: torch.Tensor) -> RoutingPlan:
        return RoutingPlan(weights=torch.ones(input_ids.shape[0], self._num_tasks, device=input_ids.device))

    def plan(self, model, input_ids, prompt_mask) -> RoutingPlan:
        return self._weights(input_ids)

    def task_probabilities(self, model, input_ids, prompt_mask) -> torch.Tensor:
        return self._weights(input_ids).weights / max(self._num_tasks, 1)

    def training_plan(self, model, input_ids, prompt_mask, task_ids):
        return self._weights(input_ids), None

    def get_config(self) -> dict[str, Any]:
        return {"num_tasks": self._num_tasks}

    @classmethod
    def for_model(cls, model, **options) -> "SumSelector":
        return cls(**options)
