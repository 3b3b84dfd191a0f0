"""The tuner: a transformers model whose target `nn.Linear`s hold every task's LoRA (PEFT's `tuners/<method>/model.py`).

Module paths match PEFT's (`base_model.model.<path>`), which is what lets each task be saved as a
plain PEFT LoRA adapter.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from peft import LoraConfig

from .config import ConPetConfig, resolve_target_modules
from .layers import RoutingContext, TaskStackedLoraLinear


def adapter_dtype(base_dtype: torch.dtype, autocast: bool) -> torch.dtype:
    """PEFT's rule: adapters of a bf16/fp16 base are kept in fp32 unless `autocast_adapter_dtype=False`
    (then in the base dtype); a quantized or integer base always gets fp32 adapters."""
    if not base_dtype.is_floating_point or (autocast and base_dtype in (torch.bfloat16, torch.float16)):
        return torch.float32
    return base_dtype


class TaskStackedLoraModel(nn.Module):
    """The tuner: the base model with task-stacked LoRA layers injected at the target modules."""

    prefix = "lora_"

    def __init__(self, model: nn.Module, config: ConPetConfig, routing: RoutingContext):
        super().__init__()
        self.model = model
        self.peft_config: dict[str, LoraConfig] = {}
        self.target_paths = resolve_target_modules(model, config.target_modules)  # may refuse: before any change
        self._base_requires_grad = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self._base_modules: dict[str, nn.Module] = {}  # path -> the module this tuner replaced there
        for path in self.target_paths:
            parent_path, _, child = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            linear = getattr(parent, child)
            self._base_modules[path] = linear
            setattr(parent, child, TaskStackedLoraLinear(
                linear, config.r, config.lora_alpha, config.lora_dropout, routing,
                adapter_dtype=adapter_dtype(linear.weight.dtype, config.autocast_adapter_dtype),
            ))

    def replace_module(self, path: str, module: nn.Module) -> nn.Module:
        """Put `module` at `path` of the base model (remembering what was there); returns the old one."""
        parent_path, _, child = path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        old = getattr(parent, child)
        self._base_modules.setdefault(path, old)
        setattr(parent, child, module)
        return old

    def restore_base_model(self) -> nn.Module:
        """Undo the wrapping in place: the base model gets back its own modules and requires_grad
        flags (a failed `from_pretrained(base_model=b)` must leave `b` as the caller gave it)."""
        for path, module in self._base_modules.items():
            parent_path, _, child = path.rpartition(".")
            parent = self.model.get_submodule(parent_path) if parent_path else self.model
            setattr(parent, child, module)
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(self._base_requires_grad.get(name, parameter.requires_grad))
        self._base_modules.clear()
        return self.model

    def lora_layers(self) -> dict[str, TaskStackedLoraLinear]:
        return {path: self.model.get_submodule(path) for path in self.target_paths}

    @property
    def active_adapters(self) -> list[str]:
        return list(self.peft_config)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)
