"""What a selector reads of a prompt: one pooled vector from the frozen backbone.

Selectors see features, never the model. The model computes them (`ConPetModel.prompt_features`)
with every task module switched off, so a prompt gives the same vector however many tasks have
been added. That is what lets ConPET's selector cache the features of stored prompts, and what
makes the analytic router's statistics exact: they never go stale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

FEATURE_SOURCES = ("embeddings", "hidden")
POOLINGS = ("mean", "max", "last")


@dataclass(frozen=True)
class FeatureSpec:
    """Which vector of the frozen backbone a selector routes on.

    `source="embeddings"`: the input token embeddings (almost free: no forward pass);
    `"hidden"`: the hidden state after `layer` (one extra forward of the backbone, or its encoder).
    `pooling` over the prompt tokens: `"mean"` (ConPET), `"max"` (SAPT's query) or `"last"` (the
    hidden state at the prompt's last token, which in a causal LM has attended to the whole
    prompt: it separates tasks that share an instruction and a label set far better than a mean,
    see the analytic router in the README).
    """

    source: str = "embeddings"
    layer: int = -1
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.source not in FEATURE_SOURCES:
            raise ValueError(f"feature_source must be one of {FEATURE_SOURCES}, got {self.source!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"feature pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.layer, int) or isinstance(self.layer, bool):
            raise ValueError(f"feature_layer must be an integer, got {self.layer!r}")


def pool_prompt(hidden: torch.Tensor, prompt_mask: torch.Tensor | None, pooling: str = "mean") -> torch.Tensor:
    """Pool [batch, seq, d] over the prompt tokens (padding and answer excluded); an empty prompt gives 0."""
    if prompt_mask is None:
        if pooling == "last":
            return hidden[:, -1]
        return hidden.mean(dim=1) if pooling == "mean" else hidden.max(dim=1).values
    mask = prompt_mask.to(hidden.device).bool()
    if pooling == "last":  # the last attended position, whichever side the padding is on
        last = mask.shape[1] - 1 - mask.flip(1).to(torch.int8).argmax(dim=1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return torch.where(mask.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))
    if pooling == "max":
        pooled = hidden.masked_fill(~mask[..., None], float("-inf")).max(dim=1).values
        return torch.where(mask.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


@torch.no_grad()
def backbone_features(backbone: nn.Module, input_ids: torch.Tensor, prompt_mask: torch.Tensor | None,
                      spec: FeatureSpec) -> torch.Tensor:
    """[batch, d] float32 features of a transformers model; the caller switches task modules off."""
    if input_ids is None:
        raise ValueError("A selector routes from input_ids (the prompt's tokens); none were given")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [batch, seq] with at least one token, got shape {list(input_ids.shape)}")
    if spec.source == "embeddings":
        hidden = backbone.get_input_embeddings()(input_ids)
    else:
        kwargs = {"attention_mask": prompt_mask.long() if prompt_mask is not None else None, "output_hidden_states": True}
        if getattr(backbone.config, "is_encoder_decoder", False):
            outputs = backbone.get_encoder()(input_ids=input_ids, **kwargs)
        else:  # the backbone without its head: no [batch, seq, vocab] logits to compute
            outputs = backbone.base_model(input_ids=input_ids, **kwargs)
        hidden = outputs.hidden_states[spec.layer]
    return pool_prompt(hidden.float(), prompt_mask, spec.pooling)


def feature_size(backbone: nn.Module, spec: FeatureSpec) -> int:
    """Width of the features `spec` gives on `backbone`."""
    if spec.source == "embeddings":
        return backbone.get_input_embeddings().embedding_dim
    config = backbone.config
    config = getattr(config, "get_text_config", lambda: config)()
    for name in ("hidden_size", "d_model", "dim"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return backbone.get_input_embeddings().embedding_dim
