"""O-LoRA (Wang et al., 2023): keep the new task's LoRA subspace orthogonal to the frozen ones."""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Regularizer, TrainingStep, task_lora_layers, zero_like_model


class OLoRARegularizer(Regularizer):
    """`lambda1 * sum_layers sum_tasks |A_old A_new^T|` (+ optional `lambda2 * ||new||_2`).

    Pushing the new task's A rows to be orthogonal to every frozen task's A rows makes the new
    update live in a subspace the old tasks do not read from, so it interferes less with them.
    Only the live A receives gradient (the frozen A's are buffers). `lambda2` is O-LoRA's L2 on
    the new LoRA (its released scripts use 0); our default follows them.
    """

    kind = "olora"

    def __init__(self, lambda1: float = 0.5, lambda2: float = 0.0) -> None:
        if lambda1 < 0 or lambda2 < 0:
            raise ValueError(f"O-LoRA weights must be >= 0, got lambda1={lambda1}, lambda2={lambda2}")
        self.lambda1 = float(lambda1)
        self.lambda2 = float(lambda2)

    def settings(self) -> dict:
        return {"lambda1": self.lambda1, "lambda2": self.lambda2}

    def penalty(self, model: nn.Module, step: TrainingStep | None = None) -> torch.Tensor:
        orthogonality, l2, reference = None, None, None
        for name, layer in task_lora_layers(model):
            live_a = layer.live_lora_A
            if live_a is None:
                continue
            reference = live_a
            frozen_a = layer.frozen_lora_A
            if frozen_a is not None and frozen_a.numel() > 0:
                if frozen_a.shape[-1] != live_a.shape[-1]:
                    raise ValueError(
                        f"{name}: frozen_lora_A {tuple(frozen_a.shape)} and live_lora_A "
                        f"{tuple(live_a.shape)} disagree on the input size"
                    )
                frozen_a = frozen_a.to(device=live_a.device, dtype=live_a.dtype)
                # [T, r_old, in] x [r_new, in] -> [T, r_old, r_new]: every old row against every new row.
                overlap = torch.einsum("tri,si->trs", frozen_a, live_a).abs().sum()
                orthogonality = overlap if orthogonality is None else orthogonality + overlap
            if self.lambda2:
                norms = live_a.norm(p=2)
                if layer.live_lora_B is not None:
                    norms = norms + layer.live_lora_B.norm(p=2)
                l2 = norms if l2 is None else l2 + norms
        if reference is None:
            return zero_like_model(model)
        total = reference.new_zeros(())
        if orthogonality is not None:
            total = total + self.lambda1 * orthogonality
        if l2 is not None:
            total = total + self.lambda2 * l2
        return total

    __call__ = penalty
