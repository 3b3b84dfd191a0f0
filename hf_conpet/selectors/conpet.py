"""ConPET's selector: a growing task classifier over frozen-backbone features."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..features import FeatureSpec
from .base import TaskSelector


class ConPetSelector(TaskSelector):
    """ConPET's PET-module selector: a task classifier whose head gains one row per task.

    Features are the frozen backbone's hidden state at `feature_layer`, mean-pooled over the
    prompt (`feature_source="hidden"`: one extra forward, ConPET's cost profile), or the pooled
    input embeddings (`feature_source="embeddings"`: almost free, the cheap path). A shared
    projection feeds a linear head [T, head_dim] that grows one row per task; growth copies the
    old rows bit for bit, and replay keeps training them so that old tasks stay recognisable.

    Deviation from ConPET (say it where figures are reported): the paper's selector carries its
    own LoRA on the backbone; here it reads the frozen backbone, so features of stored examples
    are computed once and cached, and selector training costs a fixed number of small steps per
    task instead of backbone backward passes.
    """

    kind = "conpet"

    def __init__(
        self, hidden_size: int, head_dim: int = 256, feature_source: str = "hidden", feature_layer: int = -1,
        num_tasks: int = 0, max_cached_examples: int = 256,
    ):
        super().__init__()
        self.feature_spec = FeatureSpec(feature_source, feature_layer)
        self.hidden_size, self.head_dim = hidden_size, head_dim
        self.feature_source, self.feature_layer = feature_source, feature_layer
        self.feature_norm = nn.LayerNorm(hidden_size)
        self.projection = nn.Sequential(nn.Linear(hidden_size, head_dim), nn.GELU())
        self.task_rows = nn.Parameter(torch.zeros(num_tasks, head_dim))
        self.task_bias = nn.Parameter(torch.zeros(num_tasks))
        self.max_cached_examples = max_cached_examples
        self._feature_cache: dict[int, torch.Tensor] = {}  # task index -> [n, hidden]; rebuilt on demand
        self._subset_cache: dict = {}  # task index -> the cached rows (a datasets.Dataset); rebuilt on demand

    @property
    def num_tasks(self) -> int:
        return self.task_rows.shape[0]

    def add_task(self) -> None:
        new_row = torch.empty(1, self.head_dim, device=self.task_rows.device)
        nn.init.normal_(new_row, std=self.head_dim ** -0.5)
        self.task_rows = nn.Parameter(torch.cat([self.task_rows.detach(), new_row]))
        self.task_bias = nn.Parameter(torch.cat([self.task_bias.detach(), torch.zeros(1, device=new_row.device)]))

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.projection(self.feature_norm(features.to(self.task_rows.dtype)))
        return projected @ self.task_rows.T + self.task_bias

    def task_probabilities(self, features):
        return self.logits_from_features(features).softmax(dim=-1)

    def end_task(self, context) -> dict[str, Any]:
        """Train the classifier on ConPET's dynamic-replay batches (half new task, half old tasks).

        Features of a capped, seeded subset of each task's training prompts are computed once
        and cached; every task then costs `context.steps` small steps however many came before.
        """
        from ..memory import priority_order
        from ..replay import DynamicReplaySampler

        cache, subsets, memory = self._feature_cache, self._subset_cache, context.memory
        for index in [*memory.tasks, context.task_index]:
            if index not in subsets:  # once per task (and once after a resume): the old tasks' rows never change
                if index == context.task_index:
                    rows = context.train.select(priority_order(len(context.train), index)[: self.max_cached_examples])
                else:  # after a resume: the same rows, from the memory
                    rows = memory.in_priority_order(index).select(range(min(memory.num_examples(index), self.max_cached_examples)))
                subsets[index] = rows
            if index != context.task_index and memory.budget is not None:
                kept = memory.num_examples(index)  # the budget shrank this task: cache no more than it keeps
                if len(subsets[index]) > kept:  # (both are prefixes of the task's priority order)
                    subsets[index] = subsets[index].select(range(kept))
                    if index in cache:
                        cache[index] = cache[index][:kept].clone()
            if index not in cache:
                cache[index] = context.features(subsets[index]).to(self.task_rows.device)
        if self.num_tasks < 2:
            return {"selector_steps": 0}
        old = {index: subsets[index] for index in context.memory.tasks}
        new_rows = len(subsets[context.task_index])
        batch_size = min(context.batch_size, max(2, int(new_rows * (1 + 1 / context.replay_ratio))))  # tiny tasks
        sampler = DynamicReplaySampler(
            subsets[context.task_index], old, batch_size=batch_size, batches_per_task=context.steps,
            ratio=context.replay_ratio, seed=context.seed, new_task_index=context.task_index,
        )
        plan = sampler.plan()
        self.train()
        for parameter in self.parameters():
            parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.01)
        losses = []
        for tasks, rows in zip(plan.task_index, plan.row):
            features = torch.stack([cache[int(t)][int(r)] for t, r in zip(tasks, rows)])
            targets = torch.as_tensor(tasks, dtype=torch.long, device=features.device)
            loss = nn.functional.cross_entropy(self.logits_from_features(features), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()
        return {"selector_steps": len(losses), "selector_loss_last": losses[-1]}

    def get_config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size, "head_dim": self.head_dim, "feature_source": self.feature_source,
            "feature_layer": self.feature_layer, "num_tasks": self.num_tasks,
            "max_cached_examples": self.max_cached_examples,
        }

    @classmethod
    def spec_for(cls, feature_source: str = "hidden", feature_layer: int = -1, **options) -> FeatureSpec:
        return FeatureSpec(feature_source, feature_layer)
