"""The task-stacked LoRA layer: every task's LoRA for one projection, mixed per example.

One `nn.Linear` of the base model is wrapped. Each task t owns a LoRA pair (A_t [r, in],
B_t [out, r]). Frozen tasks live in stacked *buffers* (`frozen_lora_A` [T, r, in],
`frozen_lora_B` [T, out, r]): the optimizer cannot see them, so no later step (not even weight
decay) can change them. The task being trained is the only `nn.Parameter` (`live_lora_*`), and it
is always the last index.

Which tasks an example uses is a `RoutingPlan`, decided once per forward (or generate) by the model
and shared with every layer through a `RoutingContext`. Two plans, two code paths:

- sparse (top-k, task ids): `indices [b, k]`, `weights [b, k]`. The k chosen A's and B's are
  gathered per example and concatenated into one rank-k*r LoRA per example, so a mixed batch is
  two batched matmuls; the cost grows with k, never with the number of registered tasks.
- dense (soft weights over all T tasks, SAPT): `weights [b, T]`. All A's are applied as one
  [in, T*r] matmul, scaled per example, and one [T*r, out] matmul sums the tasks.

Both compute  h = W0 x + scaling * sum_j w_j B_j A_j dropout(x),  which for a one-hot plan is
exactly PEFT's LoRA forward.
"""

from __future__ import annotations

import contextvars
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn

from .growth import append_rows


@dataclass(frozen=True)
class RoutingPlan:
    """Per-example mixing weights over task modules.

    `indices` None means `weights` covers every task in order (dense); otherwise `weights[b, j]`
    belongs to task `indices[b, j]` (sparse). `single_task` is set when every example goes, with
    weight 1, to that one task (a training batch under teacher forcing, a one-task request): the
    layers then run exactly PEFT's LoRA matmuls, with no per-example gather.
    """

    weights: torch.Tensor
    indices: torch.Tensor | None = None
    single_task: int | None = None

    @classmethod
    def from_task_ids(cls, task_ids: torch.Tensor) -> "RoutingPlan":
        task_ids = task_ids.long().view(-1, 1)
        first = task_ids[:1]
        single = int(first) if task_ids.numel() and bool((task_ids == first).all()) else None  # one check per call
        return cls(weights=torch.ones(task_ids.shape, dtype=torch.float32, device=task_ids.device), indices=task_ids,
                   single_task=single)

    @classmethod
    def top_k(cls, scores: torch.Tensor, k: int, renormalize: bool = True) -> "RoutingPlan":
        """Keep the k best tasks of `scores [b, T]` (probabilities); weights renormalised to sum to 1."""
        k = min(k, scores.shape[-1])
        weights, indices = scores.topk(k, dim=-1)
        if renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        if k == 1 and renormalize:  # every weight is 1: a batch sent to one task runs as PEFT's LoRA
            return cls.from_task_ids(indices)
        return cls(weights=weights, indices=indices)

    @property
    def batch_size(self) -> int:
        return self.weights.shape[0]

    def select(self, rows: torch.Tensor) -> "RoutingPlan":
        """The plan of a subset of the batch's examples (`rows`: indices into the batch)."""
        rows = rows.to(self.weights.device)
        return RoutingPlan(weights=self.weights[rows], indices=None if self.indices is None else self.indices[rows],
                           single_task=self.single_task)

    def to(self, device: torch.device) -> "RoutingPlan":
        return RoutingPlan(weights=self.weights.to(device), indices=None if self.indices is None else self.indices.to(device),
                           single_task=self.single_task)

    def for_batch(self, batch_size: int) -> "RoutingPlan":
        """The plan for a batch that generation expanded (beams, num_return_sequences).

        `generate` repeats each prompt contiguously (repeat_interleave), so the plan is repeated
        the same way.
        """
        if batch_size == self.batch_size:
            return self
        if batch_size % self.batch_size:
            raise ValueError(
                f"Routing plan is for a batch of {self.batch_size} examples but the layer sees a "
                f"batch of {batch_size}"
            )
        repeat = batch_size // self.batch_size
        indices = None if self.indices is None else self.indices.repeat_interleave(repeat, dim=0)
        return RoutingPlan(weights=self.weights.repeat_interleave(repeat, dim=0), indices=indices, single_task=self.single_task)


class RoutingContext:
    """The one place layers read the current plan from; set by the model around each call.

    The plan belongs to the call, not to the model: it is held in a `contextvars.ContextVar`, so
    calls made at the same time from several threads (a server), from asyncio tasks, or by the
    replicas `nn.DataParallel` runs in its own threads each see only the plan of the call they are
    in, and a selector's feature pass (`use(None)`) hides no other call's plan. Not forward hooks:
    the model says explicitly, in one `with` block, which plan holds for the call it makes.
    """

    def __init__(self) -> None:
        # (plan, {device: the plan moved there}): a model split over devices moves it once per device per call
        self._call: contextvars.ContextVar[tuple[RoutingPlan | None, dict]] = contextvars.ContextVar(
            "hf_conpet_routing_plan", default=(None, {}))
        self._disabled: contextvars.ContextVar[bool] = contextvars.ContextVar("hf_conpet_adapters_disabled", default=False)

    @property
    def plan(self) -> RoutingPlan | None:
        return self._call.get()[0]

    def plan_on(self, device: torch.device) -> RoutingPlan | None:
        """The call's plan on `device` (each layer reads it where its weights are: `device_map` splits)."""
        plan, moved = self._call.get()
        if plan is None or plan.weights.device == device:
            return plan
        if device not in moved:
            moved[device] = plan.to(device)
        return moved[device]

    def per_call(self, key, build):
        """`build()` once per call and key, reused by every later forward of the call: the decoding
        steps of one `generate` share their plan, so each layer gathers its per-example LoRA once.
        Only without gradient (a training forward is its own call anyway)."""
        plan, cache = self._call.get()
        if plan is None or torch.is_grad_enabled():
            return build()
        key = ("per_call", *key)
        if key not in cache:
            cache[key] = build()
        return cache[key]

    @property
    def adapters_disabled(self) -> bool:
        """True inside `disabled()`: calls made there run the base model alone (PEFT's `disable_adapter`)."""
        return self._disabled.get()

    @contextmanager
    def disabled(self):
        token = self._disabled.set(True)
        try:
            yield
        finally:
            self._disabled.reset(token)

    def checkpoint_contexts(self):
        """`context_fn` for `torch.utils.checkpoint` (non-reentrant): the recomputation in backward
        runs in autograd's thread, where this call's plan is not set; the second context puts back
        the plan that held when the checkpointed block first ran, so it recomputes the same thing."""
        captured, disabled = self._call.get(), self._disabled.get()

        @contextmanager
        def recompute():
            tokens = self._call.set(captured), self._disabled.set(disabled)
            try:
                yield
            finally:
                self._disabled.reset(tokens[1])
                self._call.reset(tokens[0])

        return nullcontext(), recompute()

    @contextmanager
    def use(self, plan: RoutingPlan | None):
        token = self._call.set((plan, {}))
        try:
            yield plan
        finally:
            self._call.reset(token)

    def __deepcopy__(self, memo) -> "RoutingContext":
        return RoutingContext()  # a copied model routes its own calls

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class TaskStackedLoraLinear(nn.Module):
    """An `nn.Linear` plus one LoRA per task, stacked, routed per example."""

    def __init__(self, base_layer: nn.Linear, r: int, lora_alpha: float, lora_dropout: float, routing: RoutingContext,
                 adapter_dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"TaskStackedLoraLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.r = r
        self.scaling = lora_alpha / r
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.routing = routing
        in_f, out_f = base_layer.in_features, base_layer.out_features
        factory = {"device": base_layer.weight.device, "dtype": adapter_dtype}
        self.register_buffer("frozen_lora_A", torch.zeros(0, r, in_f, **factory))
        self.register_buffer("frozen_lora_B", torch.zeros(0, out_f, r, **factory))
        self.register_parameter("live_lora_A", None)
        self.register_parameter("live_lora_B", None)

    # ----- task bookkeeping -------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return self.frozen_lora_A.shape[0] + (self.live_lora_A is not None)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def add_task(self, init_from: int | None = None) -> None:
        """Freeze the live task (if any) and open a new one at index `num_tasks`."""
        self.freeze_live()
        like = {"device": self.frozen_lora_A.device, "dtype": self.frozen_lora_A.dtype}  # beside the stacks
        A = torch.empty(self.r, self.in_features, **like)
        B = torch.zeros(self.out_features, self.r, **like)
        if init_from is None:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # PEFT's LoRA default
        else:
            A.copy_(self.frozen_lora_A[init_from])
            B.copy_(self.frozen_lora_B[init_from])
        self.live_lora_A = nn.Parameter(A)
        self.live_lora_B = nn.Parameter(B)

    def freeze_live(self) -> None:
        """Move the live task into the frozen stacks (its values are kept bit for bit)."""
        if self.live_lora_A is None:
            return
        append_rows(self, "frozen_lora_A", self.live_lora_A[None])
        append_rows(self, "frozen_lora_B", self.live_lora_B[None])
        self.live_lora_A = None
        self.live_lora_B = None

    def thaw_last(self) -> None:
        """Inverse of `freeze_live` for the last task (to resume training one shared module)."""
        if self.live_lora_A is not None:
            return
        self.live_lora_A = nn.Parameter(self.frozen_lora_A[-1].clone())
        self.live_lora_B = nn.Parameter(self.frozen_lora_B[-1].clone())
        self.frozen_lora_A = self.frozen_lora_A[:-1].clone()
        self.frozen_lora_B = self.frozen_lora_B[:-1].clone()

    def task_weights(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [r, in], B [out, r]) of one task, live or frozen."""
        n_frozen = self.frozen_lora_A.shape[0]
        if index == n_frozen and self.live_lora_A is not None:
            return self.live_lora_A, self.live_lora_B
        return self.frozen_lora_A[index], self.frozen_lora_B[index]

    def load_frozen(self, A: torch.Tensor, B: torch.Tensor) -> None:
        """Append a finished task's weights (used when loading a saved system)."""
        if self.live_lora_A is not None:
            raise RuntimeError("Cannot load a frozen task while a task is being trained")
        if tuple(A.shape) != (self.r, self.in_features) or tuple(B.shape) != (self.out_features, self.r):
            raise ValueError(
                f"LoRA shapes A{tuple(A.shape)}, B{tuple(B.shape)} do not fit this layer "
                f"(expected A{(self.r, self.in_features)}, B{(self.out_features, self.r)})"
            )
        append_rows(self, "frozen_lora_A", A[None])
        append_rows(self, "frozen_lora_B", B[None])

    # ----- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        plan = self.routing.plan_on(self.frozen_lora_A.device)
        if plan is None or self.num_tasks == 0:
            return result
        plan = plan.for_batch(x.shape[0])
        lora_in = self.lora_dropout(x.to(self.frozen_lora_A.dtype)).reshape(x.shape[0], -1, self.in_features)
        if plan.single_task is not None:
            A, B = self.task_weights(plan.single_task)
            delta = (lora_in @ A.T) @ B.T
        elif plan.indices is None:
            delta = self._dense_delta(lora_in, plan.weights)
        else:
            delta = self._sparse_delta(lora_in, plan.indices, plan.weights)
        return result + (delta * self.scaling).reshape(result.shape).to(result.dtype)

    def _stacks(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.live_lora_A is None:
            return self.frozen_lora_A, self.frozen_lora_B
        return (
            torch.cat([self.frozen_lora_A, self.live_lora_A[None]]),
            torch.cat([self.frozen_lora_B, self.live_lora_B[None]]),
        )

    def _dense_delta(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [b, s, in], weights [b, T] -> sum_t w_bt B_t A_t x  as two matmuls over all tasks."""
        A, B, scale = self.routing.per_call((id(self), "dense", x.shape[0]), lambda: self._dense_weights(weights, x.dtype))
        return ((x @ A) * scale) @ B

    def _dense_weights(self, weights: torch.Tensor, dtype: torch.dtype):
        """(A^T [in, T*r], B^T [T*r, out], per-example weight of each rank [b, 1, T*r])."""
        A, B = self._stacks()  # [T, r, in], [T, out, r]
        T = A.shape[0]
        if weights.shape[-1] != T:
            raise ValueError(f"Routing weights cover {weights.shape[-1]} tasks but the layer holds {T}")
        scale = weights.to(dtype).repeat_interleave(self.r, dim=-1)[:, None, :]
        return A.reshape(T * self.r, self.in_features).T, B.permute(1, 0, 2).reshape(self.out_features, T * self.r).T, scale

    def _sparse_delta(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [b, s, in], indices/weights [b, k] -> per example, the k chosen LoRAs as one rank-k*r LoRA."""
        A, B = self.routing.per_call((id(self), "sparse", x.shape[0]), lambda: self._sparse_weights(indices, weights))
        return torch.bmm(torch.bmm(x, A), B)

    def _sparse_weights(self, indices: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example, the k chosen LoRAs as one rank-k*r pair: (A^T [b, in, k*r], B^T [b, k*r, out])."""
        b, k = indices.shape
        A = self._gather(self.frozen_lora_A, self.live_lora_A, indices)  # [b, k, r, in]
        B = self._gather(self.frozen_lora_B, self.live_lora_B, indices)  # [b, k, out, r]
        B = B * weights.to(B.dtype)[:, :, None, None]
        A = A.reshape(b, k * self.r, self.in_features)
        B = B.permute(0, 2, 1, 3).reshape(b, self.out_features, k * self.r)
        return A.transpose(1, 2), B.transpose(1, 2)

    @staticmethod
    def _gather(frozen: torch.Tensor, live: torch.Tensor | None, indices: torch.Tensor) -> torch.Tensor:
        """Stack slices `indices` from frozen tasks and the live one, touching only those slices."""
        n_frozen = frozen.shape[0]
        if live is None:
            return frozen[indices]
        if n_frozen == 0:
            return live.expand(*indices.shape, *live.shape)
        picked = frozen[indices.clamp(max=n_frozen - 1)]
        return torch.where((indices == n_frozen)[..., None, None], live, picked)

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}, r={self.r}, scaling={self.scaling:g}"
