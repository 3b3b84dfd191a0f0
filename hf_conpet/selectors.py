"""Selectors: who decides, for an input without a task id, which task modules answer it.

A selector is an `nn.Module` that grows with the stream (`add_task`) and turns a batch of prompts
into a `RoutingPlan`. The model asks it only when neither `task_ids` nor `routing_weights` are
given. Concrete selectors register themselves in `SELECTOR_CLASSES` by `kind`, which is what the
saved `selector/config.json` records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .layers import RoutingPlan

if TYPE_CHECKING:
    from .model import ConPetModel

SELECTOR_CLASSES: dict[str, type["TaskSelector"]] = {}


class TaskSelector(nn.Module):
    """Base class: routes a batch to task modules and grows one task at a time."""

    kind: str = ""

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

    def task_probabilities(self, model: "ConPetModel", input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """[batch, T] probabilities over the registered tasks."""
        raise NotImplementedError

    def plan(self, model: "ConPetModel", input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> RoutingPlan:
        """The routing plan for a batch; default: top-k of `task_probabilities`."""
        probabilities = self.task_probabilities(model, input_ids, attention_mask)
        return RoutingPlan.top_k(probabilities, model.conpet_config.top_k)

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable settings needed to rebuild this selector before loading its weights."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any], model: "ConPetModel") -> "TaskSelector":
        return cls(**config)
