"""Selector base: who decides, for an input without a task id, which task modules answer it.

A selector is an `nn.Module` that grows with the stream (`add_task`) and turns the features of a
batch of prompts into a `RoutingPlan`. It never sees the model: it names the features it reads
(`feature_spec`, see `features.py`) and the model computes them on the frozen backbone. The model
asks it only when neither `task_ids` nor `routing_weights` are given. Concrete selectors register
themselves in `SELECTOR_CLASSES` by `kind`, which is what the saved `selector/config.json` records.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..features import FeatureSpec
from ..layers import RoutingPlan


@dataclass
class TaskEndContext:
    """What a selector may use when a task's module has been trained (see `TaskSelector.end_task`)."""

    task_index: int
    train: Any  # datasets.Dataset: the finished task's training rows
    validation: Any  # datasets.Dataset: its validation rows (never test)
    memory: Any  # replay.ReplayMemory of the *older* tasks (the finished task is added after)
    features: Callable[[Any], torch.Tensor]
    """[n, d] float32 features (the selector's `feature_spec`) of the prompts of a Dataset's rows, in row order."""
    batch_size: int
    steps: int
    replay_ratio: float
    seed: int


SELECTOR_CLASSES: dict[str, type["TaskSelector"]] = {}


class TaskSelector(nn.Module):
    """Base class: routes a batch to task modules from its prompt features; grows one task at a time."""

    kind: str = ""
    routes_in_training: bool = False
    """True when the model's training forward must route through `training_plan` (SAPT learns
    selection and task module together); False: training routes by task id (teacher forcing)."""
    feature_spec: FeatureSpec = FeatureSpec()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            SELECTOR_CLASSES[cls.kind] = cls

    @property
    def num_tasks(self) -> int:
        raise NotImplementedError

    def add_task(self) -> None:
        """Open an output for a newly added task (old outputs stay bit-identical)."""
        raise NotImplementedError

    def task_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """[batch, T] probabilities over the registered tasks, from [batch, d] prompt features."""
        raise NotImplementedError

    def plan(self, features: torch.Tensor, top_k: int = 1) -> RoutingPlan:
        """The routing plan for a batch; default: top-k of `task_probabilities`."""
        return RoutingPlan.top_k(self.task_probabilities(features), top_k)

    def training_plan(self, features: torch.Tensor, task_ids: torch.Tensor | None) -> tuple[RoutingPlan, torch.Tensor | None]:
        """Plan (with gradient) and auxiliary loss for a training batch; only if `routes_in_training`."""
        raise NotImplementedError

    def end_task(self, context: TaskEndContext) -> dict[str, Any]:
        """Update the selector after a task's module is trained (ConPET: train the classifier on
        replay batches; SAPT: record the task's mean attention for reflection; analytic: add the
        task's statistics and solve). Returns figures worth logging."""
        return {}

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable settings needed to rebuild this selector before loading its weights."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TaskSelector":
        """Rebuild from `get_config()` (a saved `selector/config.json`): only the constructor's own
        settings are accepted, and the required ones must be there, each named when it is not."""
        parameters = inspect.signature(cls.__init__).parameters
        known = {name for name in parameters if name != "self"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} config keys: {unknown}; known keys are {sorted(known)}")
        missing = sorted(name for name in known if parameters[name].default is inspect.Parameter.empty and name not in config)
        if missing:
            raise ValueError(f"{cls.__name__} config lacks {', '.join(repr(name) for name in missing)}")
        return cls(**config)

    @classmethod
    def spec_for(cls, **options) -> FeatureSpec:
        """The features a selector built with `options` reads (to size it before it exists)."""
        return cls.feature_spec

    @classmethod
    def for_model(cls, model, **options) -> "TaskSelector":
        """A fresh selector sized to `model`'s features, on its device; attach before the first task.

        Reads only what any model offers (`feature_size`, `device`, `num_tasks`)."""
        if getattr(model, "num_tasks", 0):
            raise ValueError(
                f"The model already has {model.num_tasks} tasks: a {cls.kind} selector grows one output per task "
                "as tasks are added, so attach it before the first add_task"
            )
        return cls(hidden_size=model.feature_size(cls.spec_for(**options)), **options).to(model.device)


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

    def add_task(self) -> None:
        self._num_tasks += 1

    def _weights(self, features: torch.Tensor) -> RoutingPlan:
        return RoutingPlan(weights=torch.ones(features.shape[0], self._num_tasks, device=features.device))

    def plan(self, features, top_k=1) -> RoutingPlan:
        return self._weights(features)

    def task_probabilities(self, features) -> torch.Tensor:
        return self._weights(features).weights / max(self._num_tasks, 1)

    def training_plan(self, features, task_ids):
        return self._weights(features), None

    def get_config(self) -> dict[str, Any]:
        return {"num_tasks": self._num_tasks}

    @classmethod
    def for_model(cls, model, **options) -> "SumSelector":
        return cls(**options)
