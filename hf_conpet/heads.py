"""Task-stacked classification heads: each task classifies over its own labels.

ConPET gives every task module a head over that task's classes; at inference the selected tasks'
logits fill a vector over *all* seen classes and every other class gets -100 (then argmax). This
layer replaces the base model's `classifier`/`score` linear and does exactly that, for a mixed
batch, in one matmul over the concatenated heads (tiny: labels x hidden).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .growth import append_rows
from .layers import RoutingContext

UNSELECTED_LOGIT = -100.0


class TaskStackedHead(nn.Module):
    def __init__(self, base_head: nn.Linear, routing: RoutingContext, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.base_head = base_head  # the base model's own classifier: what `disable_adapter()` answers with
        self.base_head.requires_grad_(False)
        self.in_features = base_head.in_features
        self.has_bias = base_head.bias is not None
        self.routing = routing
        device = base_head.weight.device
        self.register_buffer("frozen_head_weight", torch.zeros(0, self.in_features, device=device, dtype=dtype))
        self.register_buffer("frozen_head_bias", torch.zeros(0, device=device, dtype=dtype))
        self.register_buffer("label_task", torch.zeros(0, dtype=torch.long, device=device))
        self.register_parameter("live_head_weight", None)
        self.register_parameter("live_head_bias", None)
        self.label_counts: list[int] = []

    @property
    def num_labels(self) -> int:
        return int(self.label_task.numel())

    def label_offset(self, index: int) -> int:
        """Column of task `index`'s first label in the union label space."""
        return sum(self.label_counts[:index])

    def add_task(self, num_labels: int) -> None:
        if num_labels < 1:
            raise ValueError("A classification task needs at least one label")
        self.freeze_live()
        weight = torch.empty(num_labels, self.in_features, device=self.frozen_head_weight.device, dtype=self.frozen_head_weight.dtype)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear's default
        bound = 1 / math.sqrt(self.in_features)
        self.live_head_weight = nn.Parameter(weight)
        self.live_head_bias = nn.Parameter(torch.empty(num_labels, device=weight.device, dtype=weight.dtype).uniform_(-bound, bound)) if self.has_bias else None
        task_index = len(self.label_counts)
        self.label_counts.append(num_labels)
        append_rows(self, "label_task", torch.full((num_labels,), task_index, dtype=torch.long))

    def freeze_live(self) -> None:
        if self.live_head_weight is None:
            return
        bias = self.live_head_bias if self.has_bias else torch.zeros_like(self.live_head_weight[:, 0])
        append_rows(self, "frozen_head_weight", self.live_head_weight)
        append_rows(self, "frozen_head_bias", bias)
        self.live_head_weight = None
        self.live_head_bias = None

    def thaw_last(self) -> None:
        if self.live_head_weight is not None or not self.label_counts:
            return
        count = self.label_counts[-1]
        self.live_head_weight = nn.Parameter(self.frozen_head_weight[-count:].clone())
        self.live_head_bias = nn.Parameter(self.frozen_head_bias[-count:].clone()) if self.has_bias else None
        self.frozen_head_weight = self.frozen_head_weight[:-count].clone()
        self.frozen_head_bias = self.frozen_head_bias[:-count].clone()

    def task_state(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight [n_labels, in], bias [n_labels] or None) of one task."""
        start, stop = self.label_offset(index), self.label_offset(index) + self.label_counts[index]
        if self.live_head_weight is not None and index == len(self.label_counts) - 1:
            return self.live_head_weight, self.live_head_bias
        bias = self.frozen_head_bias[start:stop] if self.has_bias else None
        return self.frozen_head_weight[start:stop], bias

    def load_frozen(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Set the weights of the task added last (when loading) and freeze it."""
        expected = tuple(self.live_head_weight.shape)
        if tuple(weight.shape) != expected:
            raise ValueError(f"Task head weight has shape {tuple(weight.shape)}, expected {expected}")
        with torch.no_grad():
            self.live_head_weight.copy_(weight)
            if self.has_bias and bias is not None:
                self.live_head_bias.copy_(bias)
        self.freeze_live()

    def task_linear(self, index: int) -> nn.Linear:
        """Task `index`'s head as a plain `nn.Linear` over its own labels (for a merged model)."""
        weight, bias = self.task_state(index)
        linear = nn.Linear(self.in_features, weight.shape[0], bias=self.has_bias, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.has_bias:
                linear.bias.copy_(bias)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.routing.adapters_disabled:
            return self.base_head(x)
        weight, bias = self.frozen_head_weight, self.frozen_head_bias
        if self.live_head_weight is not None:
            live_bias = self.live_head_bias if self.has_bias else torch.zeros_like(self.live_head_weight[:, 0])
            weight = torch.cat([weight, self.live_head_weight])
            bias = torch.cat([bias, live_bias])
        logits = x.to(weight.dtype) @ weight.T + bias
        plan = self.routing.plan_on(logits.device)
        if plan is None:
            return logits
        plan = plan.for_batch(x.shape[0])
        selected = torch.zeros(x.shape[0], len(self.label_counts), dtype=torch.bool, device=x.device)
        if plan.indices is None:
            selected = plan.weights > 0
        else:
            selected.scatter_(1, plan.indices, plan.weights > 0)
        column_selected = selected[:, self.label_task].view(x.shape[0], *([1] * (x.dim() - 2)), -1)
        return torch.where(column_selected, logits, torch.full_like(logits, UNSELECTED_LOGIT))
