"""Elastic Weight Consolidation (Kirkpatrick et al., 2017) on the shared LoRA: a Fisher-weighted anchor."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from .base import Regularizer, TrainingStep, zero_like_model


class EWCRegularizer(Regularizer):
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

    One accumulated Fisher and the latest anchor (online EWC, Schwarz et al. 2018), not ConPET's
    one (Fisher, anchor) pair per old task: the state stays one copy of the shared module however
    many tasks pass, where ConPET's grows with every task. `max_batches` bounds the Fisher's cost
    at task end (ConPET reads the whole training loader).

    State is tensors keyed by parameter name (`state_dict`), saved as safetensors + JSON.
    """

    kind = "ewc"

    def __init__(self, lambda_: float = 1.0, max_batches: int | None = 32) -> None:
        if lambda_ < 0:
            raise ValueError(f"EWC lambda_ must be >= 0, got {lambda_}")
        if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
            raise ValueError(f"EWC max_batches must be a positive integer or None, got {max_batches!r}")
        self.lambda_ = float(lambda_)
        self.max_batches = max_batches
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

    def settings(self) -> dict:
        return {"lambda_": self.lambda_, "max_batches": self.max_batches}

    def end_task(self, model: nn.Module, batches: Iterable[Any]) -> None:
        """Consolidate the task just trained: its Fisher from the model's own training loss."""
        self.consolidate(model, batches, lambda m, batch: m(**batch).loss, max_batches=self.max_batches)

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

    def penalty(self, model: nn.Module, step: TrainingStep | None = None, strict: bool = True) -> torch.Tensor:
        """`lambda_ / 2 * sum F (theta - theta*)^2`; zero before the first `consolidate`.

        `strict`: a consolidated parameter missing from `model` is an error (the penalty would
        silently stop protecting it); pass False to skip such parameters.
        """
        if not self.fisher:
            return zero_like_model(model)
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
            return zero_like_model(model)
        return self.lambda_ / 2 * total

    __call__ = penalty

    # -- persistence (the layout is `Regularizer.save`) ----------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {f"fisher.{name}": value for name, value in self.fisher.items()}
        tensors.update({f"anchor.{name}": value for name, value in self.anchor.items()})
        return tensors

    def state_info(self) -> dict[str, Any]:
        return {"num_consolidated_tasks": self.num_consolidated_tasks}

    def load_state_dict(self, state: dict[str, torch.Tensor], info: dict[str, Any] | None = None) -> None:
        fisher = {k[len("fisher.") :]: v for k, v in state.items() if k.startswith("fisher.")}
        anchor = {k[len("anchor.") :]: v for k, v in state.items() if k.startswith("anchor.")}
        unknown = [k for k in state if not k.startswith(("fisher.", "anchor."))]
        if unknown or set(fisher) != set(anchor):
            raise ValueError(
                "EWC state must hold 'fisher.<name>' and 'anchor.<name>' for the same names; "
                f"unknown keys {unknown[:5]}, unpaired {sorted(set(fisher) ^ set(anchor))[:5]}"
            )
        self.fisher, self.anchor = fisher, anchor
        count = (info or {}).get("num_consolidated_tasks")
        if count is not None:
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError(f"EWC num_consolidated_tasks must be a non-negative integer, got {count!r}")
            self.num_consolidated_tasks = count


def _select_parameters(model: nn.Module, names: Iterable[str] | None) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters())
    if names is None:
        return {name: p for name, p in named.items() if p.requires_grad}
    names = list(names)
    unknown = [name for name in names if name not in named]
    if unknown:
        raise KeyError(f"EWC: parameters not in the model: {unknown[:5]}")
    return {name: named[name] for name in names}
