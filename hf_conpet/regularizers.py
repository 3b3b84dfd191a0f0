"""Regularisers that keep one shared (or newly added) LoRA from overwriting old tasks.

Static ConPET ports classic continual-learning methods from full fine-tuning to PET; these are
the three that need no extra module: O-LoRA's orthogonality between the new LoRA subspace and
the frozen ones, EWC's Fisher-weighted anchor to the previous parameters, and LwF's distillation
from the model as it was before the current task. Each returns a scalar tensor to add to the loss.

They find LoRA weights by duck typing on the contract of `hf_conpet.layers.TaskStackedLoraLinear`
(`frozen_lora_A` [T, r, in], `frozen_lora_B` [T, out, r], `live_lora_A` [r, in] or None,
`live_lora_B` [out, r] or None), so any module with those attributes works.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

EWC_FORMAT_VERSION = 1


def task_lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """`(name, module)` of every module carrying stacked frozen and live LoRA weights."""
    for name, module in model.named_modules():
        if hasattr(module, "frozen_lora_A") and hasattr(module, "live_lora_A"):
            yield name, module


class OLoRARegularizer:
    """O-LoRA: `lambda1 * sum_layers sum_tasks |A_old A_new^T|` (+ optional `lambda2 * ||new||_2`).

    Pushing the new task's A rows to be orthogonal to every frozen task's A rows makes the new
    update live in a subspace the old tasks do not read from, so it interferes less with them.
    Only the live A receives gradient (the frozen A's are buffers). `lambda2` is O-LoRA's L2 on
    the new LoRA (its released scripts use 0); our default follows them.
    """

    def __init__(self, lambda1: float = 0.5, lambda2: float = 0.0) -> None:
        if lambda1 < 0 or lambda2 < 0:
            raise ValueError(f"O-LoRA weights must be >= 0, got lambda1={lambda1}, lambda2={lambda2}")
        self.lambda1 = float(lambda1)
        self.lambda2 = float(lambda2)

    def penalty(self, model: nn.Module) -> torch.Tensor:
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
            return _zero_like_model(model)
        total = reference.new_zeros(())
        if orthogonality is not None:
            total = total + self.lambda1 * orthogonality
        if l2 is not None:
            total = total + self.lambda2 * l2
        return total

    __call__ = penalty


class EWCRegularizer:
    """Elastic Weight Consolidation over the trainable (live) parameters, diagonal Fisher.

    At the end of each task, `consolidate` estimates the empirical Fisher (mean over batches of
    the squared gradient of the batch loss, model in eval mode, as ConPET's `ewc_utils` does),
    adds it to the Fisher of earlier tasks, and snapshots the parameters. While training later
    tasks, `penalty(model) = lambda_ / 2 * sum F * (theta - theta*)^2` pulls the parameters that
    mattered to old tasks back towards where those tasks left them.

    Parameters are matched by name, so this is meant for ONE shared module trained through the
    stream (Static ConPET: the live LoRA is never frozen). If each task opens a fresh live LoRA,
    the anchor pulls it towards the previous task's values, which only makes sense when the new
    LoRA starts from the previous one (`new_task_init="previous"`).

    State is tensors keyed by parameter name (`state_dict`), saved as safetensors + JSON.
    """

    def __init__(self, lambda_: float = 1.0) -> None:
        if lambda_ < 0:
            raise ValueError(f"EWC lambda_ must be >= 0, got {lambda_}")
        self.lambda_ = float(lambda_)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.num_consolidated_tasks = 0

    @staticmethod
    def estimate_fisher(
        model: nn.Module,
        batches: Iterable[Any],
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        parameter_names: Iterable[str] | None = None,
        max_batches: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mean squared gradient per parameter over `batches` (default: params requiring grad).

        Gradients come from `torch.autograd.grad`, so `.grad` of the model is left untouched, and
        the model's train/eval mode is restored afterwards.
        """
        named = _select_parameters(model, parameter_names)
        if not named:
            raise ValueError("EWC: no parameters to estimate the Fisher of (none require grad)")
        names = list(named)
        parameters = [named[n] for n in names]
        sums = [torch.zeros_like(p, dtype=torch.float32) for p in parameters]
        was_training = model.training
        model.eval()
        count = 0
        try:
            for batch in batches:
                if max_batches is not None and count >= max_batches:
                    break
                loss = loss_fn(model, batch)
                if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                    raise ValueError("EWC: loss_fn(model, batch) must return a scalar tensor")
                gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
                for total, gradient in zip(sums, gradients):
                    if gradient is not None:
                        total += gradient.detach().float() ** 2
                count += 1
        finally:
            model.train(was_training)
        if count == 0:
            raise ValueError("EWC: no batches were given to estimate the Fisher from")
        return {name: total / count for name, total in zip(names, sums)}

    def consolidate(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        parameter_names: Iterable[str] | None = None,
        max_batches: int | None = None,
    ) -> None:
        """End of a task: accumulate its Fisher and anchor the parameters at their current values."""
        fisher = self.estimate_fisher(model, batches, loss_fn, parameter_names, max_batches)
        named = dict(model.named_parameters())
        for name, value in fisher.items():
            if name in self.fisher and self.fisher[name].shape != value.shape:
                raise ValueError(
                    f"EWC: parameter {name} changed shape from {tuple(self.fisher[name].shape)} to "
                    f"{tuple(value.shape)} between tasks"
                )
            self.fisher[name] = self.fisher[name].to(value.device) + value if name in self.fisher else value
            self.anchor[name] = named[name].detach().clone()
        self.num_consolidated_tasks += 1

    def penalty(self, model: nn.Module, strict: bool = True) -> torch.Tensor:
        """`lambda_ / 2 * sum F (theta - theta*)^2`; zero before the first `consolidate`.

        `strict`: a consolidated parameter missing from `model` is an error (the penalty would
        silently stop protecting it); pass False to skip such parameters.
        """
        if not self.fisher:
            return _zero_like_model(model)
        named = dict(model.named_parameters())
        missing = [name for name in self.fisher if name not in named]
        if missing and strict:
            raise KeyError(f"EWC: consolidated parameters not found in the model: {missing[:5]}")
        total = None
        for name, fisher in self.fisher.items():
            if name not in named:
                continue
            parameter = named[name]
            if parameter.shape != fisher.shape:
                raise ValueError(
                    f"EWC: parameter {name} has shape {tuple(parameter.shape)}, its Fisher "
                    f"{tuple(fisher.shape)}"
                )
            fisher = fisher.to(parameter.device)
            anchor = self.anchor[name].to(device=parameter.device, dtype=parameter.dtype)
            term = (fisher * (parameter.float() - anchor.float()) ** 2).sum()
            total = term if total is None else total + term
        if total is None:
            return _zero_like_model(model)
        return self.lambda_ / 2 * total

    __call__ = penalty

    # -- persistence --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {f"fisher.{name}": value for name, value in self.fisher.items()}
        tensors.update({f"anchor.{name}": value for name, value in self.anchor.items()})
        return tensors

    def load_state_dict(
        self, state: dict[str, torch.Tensor], num_consolidated_tasks: int | None = None
    ) -> None:
        fisher = {k[len("fisher.") :]: v for k, v in state.items() if k.startswith("fisher.")}
        anchor = {k[len("anchor.") :]: v for k, v in state.items() if k.startswith("anchor.")}
        unknown = [k for k in state if not k.startswith(("fisher.", "anchor."))]
        if unknown or set(fisher) != set(anchor):
            raise ValueError(
                "EWC state must hold 'fisher.<name>' and 'anchor.<name>' for the same names; "
                f"unknown keys {unknown[:5]}, unpaired {sorted(set(fisher) ^ set(anchor))[:5]}"
            )
        self.fisher, self.anchor = fisher, anchor
        if num_consolidated_tasks is not None:
            self.num_consolidated_tasks = int(num_consolidated_tasks)

    def save(self, directory: str | os.PathLike) -> None:
        """`ewc_state.safetensors` (Fisher and anchors) + `ewc_config.json` (lambda, task count)."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(directory, "ewc_state.safetensors"))
        config = {
            "format_version": EWC_FORMAT_VERSION,
            "lambda_": self.lambda_,
            "num_consolidated_tasks": self.num_consolidated_tasks,
        }
        with open(os.path.join(directory, "ewc_config.json"), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "EWCRegularizer":
        from ._io import read_json, read_safetensors

        config = read_json(os.path.join(directory, "ewc_config.json"))
        if config.get("format_version") != EWC_FORMAT_VERSION:
            raise ValueError(
                f"ewc_config.json in {directory} has format_version {config.get('format_version')!r}; "
                f"this hf_conpet reads {EWC_FORMAT_VERSION}"
            )
        regularizer = cls(lambda_=config["lambda_"])
        regularizer.load_state_dict(
            read_safetensors(os.path.join(directory, "ewc_state.safetensors")), config["num_consolidated_tasks"]
        )
        return regularizer


class LwFRegularizer:
    """Learning without Forgetting: distil the pre-task model's predictions into the current one.

    `penalty(student_logits, teacher_logits, mask) = lambda_ * T^2 * mean over masked positions
    of KL(softmax(teacher / T) || softmax(student / T))`. The T^2 keeps gradient magnitudes
    comparable across temperatures (Hinton et al.). Logits are `[..., classes]`, the mask `[...]`
    (e.g. `labels != -100` for a causal LM); the teacher gets no gradient. Producing teacher
    logits (a forward pass of the frozen pre-task model) is the trainer's business.
    """

    def __init__(self, temperature: float = 2.0, lambda_: float = 1.0) -> None:
        if temperature <= 0:
            raise ValueError(f"LwF temperature must be > 0, got {temperature}")
        if lambda_ < 0:
            raise ValueError(f"LwF lambda_ must be >= 0, got {lambda_}")
        self.temperature = float(temperature)
        self.lambda_ = float(lambda_)

    def penalty(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"LwF: student logits {tuple(student_logits.shape)} and teacher logits "
                f"{tuple(teacher_logits.shape)} differ; slice the student to the teacher's classes"
            )
        if mask is not None and mask.shape != student_logits.shape[:-1]:
            raise ValueError(
                f"LwF: mask {tuple(mask.shape)} must match the logits without their class dimension "
                f"{tuple(student_logits.shape[:-1])}"
            )
        temperature = self.temperature
        student = student_logits.float().reshape(-1, student_logits.shape[-1]) / temperature
        teacher = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1]) / temperature
        if mask is not None:
            keep = mask.reshape(-1).bool()
            student, teacher = student[keep], teacher[keep]
        if student.shape[0] == 0:
            return student_logits.sum() * 0.0  # nothing to distil, but stay in the graph
        teacher_log_probs = F.log_softmax(teacher, dim=-1)
        student_log_probs = F.log_softmax(student, dim=-1)
        per_position = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
        return self.lambda_ * temperature**2 * per_position.mean()

    __call__ = penalty


def _select_parameters(model: nn.Module, names: Iterable[str] | None) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters())
    if names is None:
        return {name: p for name, p in named.items() if p.requires_grad}
    names = list(names)
    unknown = [name for name in names if name not in named]
    if unknown:
        raise KeyError(f"EWC: parameters not in the model: {unknown[:5]}")
    return {name: named[name] for name in names}


def _zero_like_model(model: nn.Module) -> torch.Tensor:
    for parameter in model.parameters():
        return parameter.new_zeros(())
    return torch.zeros(())
