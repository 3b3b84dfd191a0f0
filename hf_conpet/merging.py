"""Plain transformers copies of a system: one task merged in (`merge_task`), or none (`unload`)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def unwrapped_copy(model, index: int | None) -> nn.Module:
    """A deep copy of the base model whose wrapped layers are plain again; task `index` merged in."""
    base = model.get_base_model()
    skip = {}  # the stacks of every task need not be copied
    for layer in model.base_model.lora_layers().values():
        stacks = (layer.frozen_lora_A, layer.frozen_lora_B, layer.live_lora_A, layer.live_lora_B,
                  *layer.__dict__.get("_growth_storage", {}).values())
        for tensor in stacks:
            if tensor is not None:
                skip[id(tensor)] = None
    copied = copy.deepcopy(base, memo=skip)
    for path, layer in model.base_model.lora_layers().items():
        linear = copied.get_submodule(path).base_layer
        if index is not None:
            if not isinstance(linear.weight, nn.Parameter) or not linear.weight.dtype.is_floating_point or type(linear) is not nn.Linear:
                raise ValueError(f"Cannot merge into {path}: its base layer ({type(linear).__name__}, "
                                 f"{linear.weight.dtype}) is not a plain floating-point nn.Linear (a quantized base?)")
            A, B = layer.task_weights(index)
            with torch.no_grad():
                linear.weight += (layer.scaling * (B.detach().float() @ A.detach().float())).to(linear.weight)
        parent_path, _, child = path.rpartition(".")
        setattr(copied.get_submodule(parent_path) if parent_path else copied, child, linear)
    model._unwrap_heads(copied, index)
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied
