"""SAPT's selector: one shared attention that both mixes the task LoRAs and remembers how it chose.

Shared Attentive Learning & Selection (SALS, Zhao et al. 2024): a query made from the prompt's
token embeddings attends over one key per task; the soft weights `softmax(K q / sqrt(d))` mix
every task's LoRA, *the same way* while the new task is learned and at inference. Because the
LM loss of the new task flows through those weights, what the new LoRA learns and how inputs are
routed to it are learned together.

Attentive Reflection (ARM): after task i, the mean attention over task i's validation inputs is
recorded; while later tasks are learned, pseudo-samples of task i are pulled back towards it with
`arm_lambda * KL(target_i || weights(x))` at *every* training step (as the official code does), so
that the shared query network does not forget how it used to route old tasks.

Frozen/live split (as in `TaskStackedLoraLinear`): keys of finished tasks live in a buffer
(`frozen_keys`), the task being learned owns the only key `nn.Parameter` (`live_key`). No
optimizer can see old keys, so nothing, not even weight decay, moves them.

Pseudo-samples: the paper generates them with a small generator LoRA per task; here they are real
inputs of old tasks, 2% of each task's training set, drawn when the task ends. The query reads
nothing but frozen token embeddings, so a pseudo-sample is stored as its max-pooled embedding
(`reflection_inputs`, [N, d]): reflecting on every one of them costs one small MLP per step and
no backbone forward. (An earlier version mixed the pseudo-samples into the training batches; at
25 steps per task a pseudo-sample was then seen about once, and the attention forgot.)

Deviation, for small budgets: `selection_lambda * CE(K q / sqrt(d), task being learned)` on the
new task's training rows. In the paper the attention learns to pick the new key only through the
LM loss, which needs many steps: the new key only gains weight once its LoRA beats the old ones
on the new task, and an old LoRA that already writes the answer format wins early. At 25 steps
per task on 10 tasks the attention never separated (selector accuracy ~1/T) and one module took
over every task. The training rows' task id is known while a task is learned, so this term
costs nothing at inference; ARM's recorded targets then become near one-hot, and ARM keeps them.
Off by default (`selection_lambda=0`, the paper's SALS exactly): on the 2-task sst2 -> amazon slow test
it lowered SAPT below seq_lora; `benchmarks/continual_accuracy.py` sets 1.0 for the 10-task stream.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..features import FeatureSpec
from ..growth import append_rows
from ..layers import RoutingPlan
from .base import TaskEndContext, TaskSelector

DEFAULT_SELECTION_LAMBDA = 0.0
"""Weight of the attention's cross-entropy towards the task being learned (0: as in the paper)."""

DEFAULT_ARM_LAMBDA = 0.5
"""Paper range 0.1-2; official scripts: 0.1 (T5-large, lr 3e-4), 2 (LLaMA, lr 5e-5). They add one
KL per old task (so the pull grows with the number of tasks); here the KL is averaged over old
tasks (each task's KL averaged over its pseudo-samples), so the pull does not grow with T."""

PSEUDO_SAMPLE_FRACTION = 0.02
"""SAPT: pseudo-samples of a task are 2% of its training set (at least one)."""


class SaptSelector(TaskSelector):
    """SAPT: max-pooled prompt embeddings -> query MLP -> softmax over per-task keys (dense weights).

    `hidden_size` is d (the base model's embedding width), `hidden` the query MLP's bottleneck
    (SAPT: 100). `num_tasks` and `live_task` only matter when rebuilding a saved selector: they
    give the buffers the shapes `load_state_dict` expects.
    """

    kind = "sapt"
    routes_in_training = True
    feature_spec = FeatureSpec("embeddings", pooling="max")  # SAPT's query: max-pooled token embeddings

    def __init__(
        self,
        hidden_size: int,
        hidden: int = 100,
        arm_lambda: float = DEFAULT_ARM_LAMBDA,
        use_arm: bool = True,
        num_tasks: int = 0,
        live_task: bool = False,
        num_pseudo_samples: int = 0,
        selection_lambda: float = DEFAULT_SELECTION_LAMBDA,
    ):
        super().__init__()
        problems = []
        if not isinstance(hidden_size, int) or hidden_size < 1:
            problems.append(f"hidden_size must be a positive integer, got {hidden_size!r}")
        if not isinstance(hidden, int) or hidden < 1:
            problems.append(f"hidden must be a positive integer, got {hidden!r}")
        if not isinstance(arm_lambda, (int, float)) or arm_lambda < 0:
            problems.append(f"arm_lambda must be a number >= 0, got {arm_lambda!r}")
        if not isinstance(selection_lambda, (int, float)) or selection_lambda < 0:
            problems.append(f"selection_lambda must be a number >= 0, got {selection_lambda!r}")
        if not isinstance(num_tasks, int) or num_tasks < 0:
            problems.append(f"num_tasks must be an integer >= 0, got {num_tasks!r}")
        if not isinstance(num_pseudo_samples, int) or num_pseudo_samples < 0:
            problems.append(f"num_pseudo_samples must be an integer >= 0, got {num_pseudo_samples!r}")
        if live_task and num_tasks < 1:
            problems.append("live_task=True needs num_tasks >= 1")
        if problems:
            raise ValueError("Invalid SaptSelector settings: " + "; ".join(problems))
        self.hidden_size, self.hidden = hidden_size, hidden
        self.arm_lambda, self.use_arm = float(arm_lambda), bool(use_arm)
        self.selection_lambda = float(selection_lambda)
        d = hidden_size
        # Linear(d, h) -> Linear(h, d) -> SiLU -> LayerNorm(d), as SAPT writes it (no activation
        # between the two linears: a rank-h linear map, then the nonlinearity).
        self.query = nn.Sequential(nn.Linear(d, hidden), nn.Linear(hidden, d), nn.SiLU(), nn.LayerNorm(d))
        for layer in self.query:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        n_frozen = num_tasks - int(bool(live_task))
        self.register_buffer("frozen_keys", torch.empty(n_frozen, d).uniform_(-1.0, 1.0))
        self.register_parameter("live_key", nn.Parameter(torch.empty(1, d).uniform_(-1.0, 1.0)) if live_task else None)
        # ARM targets: row i = mean attention of task i over its validation inputs, zero-padded
        # for keys added after it; `arm_recorded[i]` says whether row i has been recorded.
        self.register_buffer("arm_targets", torch.zeros(num_tasks, num_tasks))
        self.register_buffer("arm_recorded", torch.zeros(num_tasks, dtype=torch.bool))
        # ARM pseudo-samples: max-pooled prompt embeddings of finished tasks, and their task.
        self.register_buffer("reflection_inputs", torch.zeros(num_pseudo_samples, d))
        self.register_buffer("reflection_tasks", torch.zeros(num_pseudo_samples, dtype=torch.long))

    # ----- tasks ------------------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return self.frozen_keys.shape[0] + (self.live_key is not None)

    @property
    def keys(self) -> torch.Tensor:
        """[T, d]: frozen keys (no gradient) then the live key (gradient), in task order."""
        if self.live_key is None:
            return self.frozen_keys
        return torch.cat([self.frozen_keys, self.live_key])

    def freeze_live(self) -> None:
        """Move the live key into the frozen buffer, bit for bit (end of its task)."""
        if self.live_key is None:
            return
        append_rows(self, "frozen_keys", self.live_key)
        self.live_key = None

    def add_task(self) -> None:
        """Freeze the previous task's key and open a trainable key, Uniform(-1, 1), for the new one."""
        self.freeze_live()
        device = self.frozen_keys.device
        self.live_key = nn.Parameter(torch.empty(1, self.hidden_size, device=device, dtype=self.frozen_keys.dtype).uniform_(-1.0, 1.0))
        T = self.num_tasks
        targets = torch.zeros(T, T, device=device, dtype=self.arm_targets.dtype)
        targets[: T - 1, : T - 1] = self.arm_targets
        self.arm_targets = targets
        append_rows(self, "arm_recorded", torch.zeros(1, dtype=torch.bool))

    # ----- attention --------------------------------------------------------------------------
    def attention_logits(self, features: torch.Tensor) -> torch.Tensor:
        """[batch, T] scores K q / sqrt(d) from max-pooled prompt embeddings [batch, d]; gradient
        reaches the query network and the live key only."""
        if self.num_tasks == 0:
            raise RuntimeError("SaptSelector has no task keys yet: call model.add_task(...) first")
        q = self.query(features.to(self.frozen_keys.dtype))  # [b, d]
        return q @ self.keys.T / math.sqrt(self.hidden_size)

    def task_probabilities(self, features) -> torch.Tensor:
        return self.attention_logits(features).softmax(dim=-1)

    def plan(self, features, top_k=1) -> RoutingPlan:
        """Dense soft weights over every task (SAPT never takes an argmax; `top_k` is ignored)."""
        return RoutingPlan(weights=self.task_probabilities(features))

    def training_plan(self, features, task_ids) -> tuple[RoutingPlan, torch.Tensor | None]:
        """The same soft weights as inference, with gradient, plus the auxiliary losses: the
        selection term on the live task's rows and the ARM term on the pseudo-samples."""
        logits = self.attention_logits(features)
        terms = [term for term in (self.selection_loss(logits, task_ids), self.reflection_term()) if term is not None]
        return RoutingPlan(weights=logits.softmax(dim=-1)), sum(terms) if terms else None

    def selection_loss(self, logits: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor | None:
        """`selection_lambda * CE(logits, live task)` over the rows of the task being learned; None
        when there is nothing to separate (one key, no live key, no such rows, or lambda 0)."""
        if self.selection_lambda == 0 or task_ids is None or self.live_key is None or self.num_tasks < 2:
            return None
        task_ids = _row_task_ids(task_ids, logits)
        live_rows = task_ids == self.num_tasks - 1
        if not bool(live_rows.any()):
            return None
        return self.selection_lambda * F.cross_entropy(logits[live_rows].float(), task_ids[live_rows])

    # ----- attentive reflection ---------------------------------------------------------------
    def reflection_term(self) -> torch.Tensor | None:
        """The ARM loss of one training step: every stored pseudo-sample against its task's target.

        Gradient reaches the query network and the live key only (old keys are buffers)."""
        if not self.use_arm or self.arm_lambda == 0 or self.reflection_tasks.numel() == 0:
            return None
        query = self.query(self.reflection_inputs)
        return self.reflection_loss(query @ self.keys.T / math.sqrt(self.hidden_size), self.reflection_tasks)

    def reflection_loss(self, logits: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor | None:
        """`arm_lambda * mean over tasks i of mean_x KL(target_i || softmax(logits_x))` over rows of
        recorded (finished) tasks; None when there are none, no task ids, or ARM is off.

        Rows of a task without a recorded target (the task being learned) never enter this term.
        Averaging per task first keeps a task with many rows from outweighing the others.
        """
        if not self.use_arm or self.arm_lambda == 0 or task_ids is None:
            return None
        task_ids = _row_task_ids(task_ids, logits)
        if task_ids.numel() and (task_ids.min() < 0 or task_ids.max() >= self.num_tasks):
            raise ValueError(
                f"task_ids out of range: got values in [{int(task_ids.min())}, {int(task_ids.max())}] "
                f"but the selector has {self.num_tasks} tasks"
            )
        reflect = self.arm_recorded[task_ids]
        if not bool(reflect.any()):
            return None
        target = self.arm_targets[task_ids[reflect]]  # [n, T], zero-padded for newer keys
        log_weights = logits[reflect].float().log_softmax(dim=-1)
        kl = (torch.xlogy(target, target) - target * log_weights).sum(dim=-1)  # 0 log 0 = 0
        tasks = task_ids[reflect]
        per_task = torch.zeros(self.num_tasks, device=kl.device, dtype=kl.dtype).index_add(0, tasks, kl)
        counts = torch.bincount(tasks, minlength=self.num_tasks)
        present = counts > 0
        return self.arm_lambda * (per_task[present] / counts[present]).mean()

    @torch.no_grad()
    def end_task(self, context: TaskEndContext) -> dict[str, Any]:
        """Record the finished task's mean attention over its validation prompts, store its
        pseudo-samples (2% of its training prompts, seeded), freeze its key."""
        index = context.task_index
        if not 0 <= index < self.num_tasks:
            raise ValueError(f"end_task for task {index}, but the selector has {self.num_tasks} tasks")
        device = self.frozen_keys.device
        weights = self.task_probabilities(context.features(context.validation).to(device))
        total, count = weights.sum(dim=0), weights.shape[0]
        hits = int((weights.argmax(dim=-1) == index).sum())
        if count == 0 and self.use_arm:
            raise ValueError(f"Task {index} has no validation inputs: ARM needs them to record its attention target")
        self.freeze_live()
        if count == 0:
            return {"arm_recorded": False}
        target = total / count
        self.arm_targets[index] = 0.0
        self.arm_targets[index, : target.shape[0]] = target
        self.arm_recorded[index] = True
        stored = self.store_pseudo_samples(context) if self.use_arm else 0
        return {"arm_recorded": True, "arm_target": target.tolist(), "validation_selector_accuracy": hits / count,
                "pseudo_samples": stored}

    def store_pseudo_samples(self, context: TaskEndContext) -> int:
        """Append 2% (at least one) of the finished task's training prompts to the reflection bank."""
        rows = context.train
        if rows is None or len(rows) == 0:
            raise ValueError(f"Task {context.task_index} has no training rows to draw ARM pseudo-samples from")
        count = min(len(rows), max(1, math.ceil(PSEUDO_SAMPLE_FRACTION * len(rows))))
        picked = torch.randperm(len(rows), generator=torch.Generator().manual_seed(context.seed))[:count].sort().values
        picked_rows = rows.select(picked.tolist())
        device = self.frozen_keys.device
        pooled = context.features(picked_rows).to(device)
        append_rows(self, "reflection_inputs", pooled)
        append_rows(self, "reflection_tasks", torch.full((pooled.shape[0],), context.task_index))
        return pooled.shape[0]

    # ----- (de)serialisation -------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size, "hidden": self.hidden, "arm_lambda": self.arm_lambda,
            "use_arm": self.use_arm, "num_tasks": self.num_tasks, "live_task": self.live_key is not None,
            "num_pseudo_samples": int(self.reflection_tasks.numel()), "selection_lambda": self.selection_lambda,
        }

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}, d={self.hidden_size}, hidden={self.hidden}, arm_lambda={self.arm_lambda:g}, use_arm={self.use_arm}, selection_lambda={self.selection_lambda:g}"


def _row_task_ids(task_ids, logits: torch.Tensor) -> torch.Tensor:
    """`task_ids` as a flat long tensor beside `logits` [batch, T], one id per row."""
    task_ids = torch.as_tensor(task_ids, device=logits.device).view(-1).long()
    if task_ids.numel() != logits.shape[0]:
        raise ValueError(f"task_ids has {task_ids.numel()} entries for a batch of {logits.shape[0]}")
    return task_ids
