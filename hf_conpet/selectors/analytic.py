"""A router that cannot forget: ridge regression onto task ids, solved in closed form.

The backbone is frozen, so the features a selector reads never change. A linear router over
them then has a closed form that needs no replay and no stored example: ridge regression of
one-hot task targets on the features,

    W = (A + lambda I)^-1 C,    A = sum_x phi(x) phi(x)^T  [D, D],    C[:, t] = sum_{x in task t} phi(x)  [D, T],

(stored one row per task, like every stack of the library: `cross_correlation` is C^T [T, D], `weights` W^T)

is exactly the router that training jointly on every task's prompts would give (Any-SSR and the
analytic-learning papers build their routers this way). Each task adds its prompts' statistics
to A and C once, when it ends; sums do not care about order, so the router after tasks 1..T is
the same for every task order, and old tasks can only lose routing accuracy to genuine confusion
with newer tasks, never to drift.

`phi(x)` is the selector's prompt features (pooled input embeddings or a hidden layer, like
ConPET's selector; method `conpet_analytic` reads the last layer's hidden state at the prompt's
last token, measured best on the 10-task benchmark), scaled per example to unit RMS, optionally
followed by a fixed random ReLU expansion (`expansion_dim`) for more capacity, and a constant 1
(the bias). Lambda is chosen at every task
end on the validation split, also in closed form: the validation statistics (A_v, C_v) give
the validation squared error of any W without keeping a validation example,
`tr(W^T A_v W) - 2 tr(W^T C_v) + n_v`, and one eigendecomposition of A gives W for every
lambda on the grid. Everything is float64, so the saved statistics reproduce the router to
round-off after a reload, and learning can go on from there.
"""

from __future__ import annotations

from typing import Any

import torch

from ..features import FeatureSpec
from ..growth import append_rows
from ..layers import RoutingPlan
from .base import TaskEndContext, TaskSelector

RIDGE_GRID = tuple(10.0 ** k for k in range(-6, 2))
"""Lambda candidates, as multiples of the mean eigenvalue of A (trace / D): scale-free."""

DEFAULT_RIDGE = 1e-3
"""Lambda (same units) while no validation statistics exist."""


class AnalyticSelector(TaskSelector):
    """Closed-form (ridge) task router over frozen features; top-k routing like ConPET's.

    `hidden_size` is the width d of the features; `expansion_dim` e adds e fixed random ReLU
    features (seeded by `expansion_seed`), so the statistics are D x D with D = d + e + 1.
    `max_examples_per_task` caps the training prompts a task contributes (a seeded subset; None:
    all). `temperature` turns the regression scores into the probabilities `route` returns
    (argmax, hence top-1 routing, does not depend on it). `num_tasks` only matters when
    rebuilding a saved selector.
    """

    kind = "analytic"

    def __init__(
        self, hidden_size: int, feature_source: str = "embeddings", feature_layer: int = -1, feature_pooling: str = "mean",
        expansion_dim: int = 0,
        expansion_seed: int = 0, temperature: float = 0.1, max_examples_per_task: int | None = None,
        balance_tasks: bool = True, num_tasks: int = 0,
    ):
        super().__init__()
        problems = []
        for name, value, minimum in (("hidden_size", hidden_size, 1), ("expansion_dim", expansion_dim, 0),
                                     ("num_tasks", num_tasks, 0), ("expansion_seed", expansion_seed, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                problems.append(f"{name} must be an integer >= {minimum}, got {value!r}")
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            problems.append(f"temperature must be > 0, got {temperature!r}")
        if max_examples_per_task is not None and (not isinstance(max_examples_per_task, int) or max_examples_per_task < 1):
            problems.append(f"max_examples_per_task must be an integer >= 1 or None, got {max_examples_per_task!r}")
        if problems:
            raise ValueError("Invalid AnalyticSelector settings: " + "; ".join(problems))
        self.feature_spec = FeatureSpec(feature_source, feature_layer, feature_pooling)
        self.hidden_size, self.expansion_dim, self.expansion_seed = hidden_size, expansion_dim, expansion_seed
        self.temperature, self.max_examples_per_task = float(temperature), max_examples_per_task
        self.balance_tasks = bool(balance_tasks)
        size = hidden_size + expansion_dim + 1
        generator = torch.Generator().manual_seed(expansion_seed)
        expansion = torch.randn(expansion_dim, hidden_size, generator=generator, dtype=torch.float64) / hidden_size ** 0.5
        self.register_buffer("expansion", expansion)
        self.register_buffer("autocorrelation", torch.zeros(size, size, dtype=torch.float64))
        self.register_buffer("cross_correlation", torch.zeros(num_tasks, size, dtype=torch.float64))
        self.register_buffer("validation_autocorrelation", torch.zeros(size, size, dtype=torch.float64))
        self.register_buffer("validation_cross_correlation", torch.zeros(num_tasks, size, dtype=torch.float64))
        self.register_buffer("weights", torch.zeros(num_tasks, size, dtype=torch.float64))
        self.register_buffer("finished", torch.zeros(num_tasks, dtype=torch.bool))
        self.register_buffer("ridge", torch.tensor(DEFAULT_RIDGE, dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        """Follow the model's device but never its dtype: `model.to(torch.bfloat16)` must not round
        the statistics (the router is exact only in float64; its matmuls are tiny)."""
        device = fn(torch.zeros(0, dtype=torch.float64)).device
        for name, buffer in self._buffers.items():
            if buffer is not None:
                self._buffers[name] = buffer.to(device)
        return self

    @property
    def num_tasks(self) -> int:
        return self.weights.shape[0]

    @property
    def statistics_size(self) -> int:
        return self.autocorrelation.shape[0]

    def add_task(self) -> None:
        """One more (empty) target row; it routes nothing until its task ends."""
        for name in ("cross_correlation", "validation_cross_correlation", "weights"):
            append_rows(self, name, torch.zeros(1, self.statistics_size))
        append_rows(self, "finished", torch.zeros(1, dtype=torch.bool))

    # ----- features -> scores -----------------------------------------------------------------
    def feature_map(self, features: torch.Tensor) -> torch.Tensor:
        """phi(x) [n, D] in float64: normalised features, random ReLU expansion, constant 1."""
        x = features.to(device=self.weights.device, dtype=torch.float64)
        if x.dim() != 2 or x.shape[1] != self.hidden_size:
            raise ValueError(f"AnalyticSelector expects features [n, {self.hidden_size}], got {list(x.shape)}")
        x = x * (self.hidden_size ** 0.5 / x.norm(dim=1, keepdim=True).clamp_min(1e-12))  # unit RMS, direction kept
        parts = [x]
        if self.expansion_dim:
            parts.append(torch.relu(x @ self.expansion.T))
        parts.append(x.new_ones(x.shape[0], 1))
        return torch.cat(parts, dim=1)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """[n, T] regression scores (about 1 for the predicted task); tasks not finished yet score -inf."""
        scores = self.feature_map(features) @ self.weights.T
        if bool(self.finished.any()):
            scores = scores.masked_fill(~self.finished, float("-inf"))
        return scores

    def task_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return (self.scores(features) / self.temperature).softmax(dim=-1).float()

    def plan(self, features: torch.Tensor, top_k: int = 1) -> RoutingPlan:
        return RoutingPlan.top_k(self.task_probabilities(features), top_k)

    # ----- learning: statistics, then the closed form -------------------------------------------
    @torch.no_grad()
    def add_statistics(self, task_index: int, train_features: torch.Tensor, validation_features: torch.Tensor | None = None) -> None:
        """Add one task's prompts to A, C (and A_v, C_v); each task exactly once."""
        if not 0 <= task_index < self.num_tasks:
            raise ValueError(f"Task index {task_index} is out of range: the selector has {self.num_tasks} tasks")
        if bool(self.finished[task_index]):
            raise ValueError(f"Task {task_index}'s statistics were already added: a task is learned once")
        if len(train_features) == 0:
            raise ValueError(f"Task {task_index} has no training prompts: the analytic router needs some")
        phi = self.feature_map(train_features)
        weight = 1.0 / len(phi) if self.balance_tasks else 1.0
        self.autocorrelation += weight * (phi.T @ phi)
        self.cross_correlation[task_index] += weight * phi.sum(dim=0)
        if validation_features is not None and len(validation_features):
            phi = self.feature_map(validation_features)
            weight = 1.0 / len(phi) if self.balance_tasks else 1.0
            self.validation_autocorrelation += weight * (phi.T @ phi)
            self.validation_cross_correlation[task_index] += weight * phi.sum(dim=0)
        self.finished[task_index] = True

    @torch.no_grad()
    def solve(self) -> dict[str, Any]:
        """Ridge weights for the statistics so far, lambda chosen by validation squared error."""
        A, C = self.autocorrelation, self.cross_correlation.T
        scale = float(torch.trace(A)) / A.shape[0]
        if scale == 0.0:
            return {"ridge": None}
        eigenvalues, Q = torch.linalg.eigh(A)
        projected = Q.T @ C  # [D, T]
        has_validation = bool(self.validation_autocorrelation.abs().sum() > 0)
        if has_validation:
            val_A = Q.T @ self.validation_autocorrelation @ Q
            val_C = Q.T @ self.validation_cross_correlation.T
        errors = {}
        for factor in RIDGE_GRID if has_validation else (DEFAULT_RIDGE,):
            Z = projected / (eigenvalues.clamp_min(0.0) + factor * scale)[:, None]
            errors[factor] = float((Z * (val_A @ Z)).sum() - 2 * (Z * val_C).sum()) if has_validation else 0.0
        best = min(errors, key=errors.get)
        self.ridge.fill_(best * scale)
        self.weights = (Q @ (projected / (eigenvalues.clamp_min(0.0) + self.ridge)[:, None])).T.contiguous()
        return {"ridge": float(self.ridge), "ridge_factor": best,
                "validation_squared_error": errors[best] if has_validation else None}

    @torch.no_grad()
    def end_task(self, context: TaskEndContext) -> dict[str, Any]:
        """Add the finished task's training and validation statistics, then solve."""
        rows = context.train
        if self.max_examples_per_task is not None and len(rows) > self.max_examples_per_task:
            rows = rows.shuffle(seed=context.seed).select(range(self.max_examples_per_task))
        self.add_statistics(context.task_index, context.features(rows), context.features(context.validation))
        figures = self.solve()
        return {"selector_examples": len(rows), **figures}

    # ----- (de)serialisation -------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size, "feature_source": self.feature_spec.source,
            "feature_layer": self.feature_spec.layer, "feature_pooling": self.feature_spec.pooling,
            "expansion_dim": self.expansion_dim,
            "expansion_seed": self.expansion_seed, "temperature": self.temperature,
            "max_examples_per_task": self.max_examples_per_task, "balance_tasks": self.balance_tasks,
            "num_tasks": self.num_tasks,
        }

    @classmethod
    def spec_for(cls, feature_source: str = "embeddings", feature_layer: int = -1, feature_pooling: str = "mean",
                 **options) -> FeatureSpec:
        return FeatureSpec(feature_source, feature_layer, feature_pooling)

    def extra_repr(self) -> str:
        return (f"tasks={self.num_tasks}, d={self.hidden_size}, expansion={self.expansion_dim}, "
                f"source={self.feature_spec.source}, pooling={self.feature_spec.pooling}, ridge={float(self.ridge):.3g}")
