"""What every regulariser shares: the step it may read, the LoRA layers it finds, its saved state.

A regulariser is an extra loss on the module being trained. The model adds `penalty(model, step)`
to every training loss (`ConPetModel.forward`); the callback calls `end_task(model, batches)` when
a task's training ends, which is where EWC estimates its Fisher and LwF keeps its teacher; the
checkpoint saves `state_dict()` so a resumed run regularises exactly as the uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

REGULARIZER_FORMAT_VERSION = 1
STATE_FILE = "regularizer_state.safetensors"
CONFIG_FILE = "regularizer.json"


@dataclass
class TrainingStep:
    """What a regulariser may read of the step being trained: the model's logits and labels, and
    `rerun(parameters)`, the same forward (same inputs, same routing) without gradient and with the
    named parameters of `model.base_model` replaced (LwF's teacher is the model before the task)."""

    logits: torch.Tensor | None
    labels: torch.Tensor | None
    task_type: str
    rerun: Callable[[dict[str, torch.Tensor]], Any]


class Regularizer:
    """Base: no state, nothing to do at task end. Subclasses set `kind` and implement `penalty`."""

    kind = ""

    def penalty(self, model: nn.Module, step: TrainingStep | None = None) -> torch.Tensor:
        raise NotImplementedError

    def end_task(self, model: nn.Module, batches: Iterable[Any]) -> None:
        """A task's training ended; `batches` are its training batches (model inputs with labels)."""

    def settings(self) -> dict[str, Any]:
        """The constructor settings (saved beside the state)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got tensors {sorted(state)[:5]}")

    def state_info(self) -> dict[str, Any]:
        """Plain values of the state (task counts), saved as JSON."""
        return {}

    # -- persistence: one layout for every regulariser ---------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """`regularizer.json` (kind, settings, state info) + `regularizer_state.safetensors`."""
        from safetensors.torch import save_file

        from .._io import write_json

        os.makedirs(directory, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(directory, STATE_FILE))
        write_json(os.path.join(directory, CONFIG_FILE), {
            "format_version": REGULARIZER_FORMAT_VERSION, "kind": self.kind,
            "settings": self.settings(), "state": self.state_info(),
        })

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Regularizer":
        """What `save` wrote, built with its saved settings; another kind is refused by name."""
        from .._io import read_json, read_safetensors

        path = os.path.join(directory, CONFIG_FILE)
        saved = read_json(path)
        if not isinstance(saved, dict) or saved.get("format_version") != REGULARIZER_FORMAT_VERSION:
            raise ValueError(f"{path}: not a regulariser state of format {REGULARIZER_FORMAT_VERSION}")
        if saved.get("kind") != cls.kind:
            raise ValueError(f"{path} holds a {saved.get('kind')!r} regulariser, not {cls.kind!r}")
        if not isinstance(saved.get("settings"), dict) or not isinstance(saved.get("state", {}), dict):
            raise ValueError(f"{path}: 'settings' and 'state' must be JSON objects")
        try:
            regularizer = cls(**saved["settings"])
        except TypeError as error:
            raise ValueError(f"{path}: settings {saved['settings']} do not build a {cls.__name__}: {error}") from None
        regularizer.load_state_dict(read_safetensors(os.path.join(directory, STATE_FILE)), saved.get("state", {}))
        return regularizer


def task_lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """`(name, module)` of every module carrying stacked frozen and live LoRA weights."""
    for name, module in model.named_modules():
        if hasattr(module, "frozen_lora_A") and hasattr(module, "live_lora_A"):
            yield name, module


def trainable_parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters that train (the live module), by name."""
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def zero_like_model(model: nn.Module) -> torch.Tensor:
    for parameter in model.parameters():
        return parameter.new_zeros(())
    return torch.zeros(())
