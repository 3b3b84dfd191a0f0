"""Regularisers that keep one shared (or newly added) LoRA from overwriting old tasks.

Static ConPET ports classic continual-learning methods from full fine-tuning to PET; these are
the ones that need no extra module: O-LoRA's orthogonality between the new LoRA subspace and the
frozen ones (`olora.py`), EWC's Fisher-weighted anchor to the previous parameters (`ewc.py`) and
LwF's distillation from the model as it was before the current task (`lwf.py`). Each is a
`Regularizer` (`base.py`): a penalty added to the training loss, work at task end, saved state.

They find LoRA weights by duck typing on the contract of `hf_conpet.layers.TaskStackedLoraLinear`
(`frozen_lora_A` [T, r, in], `frozen_lora_B` [T, out, r], `live_lora_A` [r, in] or None,
`live_lora_B` [out, r] or None), so any module with those attributes works.
"""

from __future__ import annotations

from .base import Regularizer, TrainingStep, task_lora_layers
from .ewc import EWCRegularizer
from .lwf import LwFRegularizer
from .olora import OLoRARegularizer

REGULARIZER_CLASSES = {cls.kind: cls for cls in (OLoRARegularizer, EWCRegularizer, LwFRegularizer)}

#: The weight each regulariser gets when `ConPetConfig.regularizer_weight` is None: O-LoRA's
#: lambda1 of its paper, EWC's and LwF's lambda of ConPET's released configs.
DEFAULT_WEIGHTS = {"olora": 0.5, "ewc": 1.0, "lwf": 1.0}


def build_regularizer(config) -> Regularizer | None:
    """The regulariser a `ConPetConfig` names (None for 'none'), weighted as it says."""
    kind = config.regularizer
    if kind == "none":
        return None
    weight = config.regularizer_weight if config.regularizer_weight is not None else DEFAULT_WEIGHTS[kind]
    if kind == "olora":
        return OLoRARegularizer(lambda1=weight)
    return REGULARIZER_CLASSES[kind](lambda_=weight)


__all__ = ["DEFAULT_WEIGHTS", "EWCRegularizer", "LwFRegularizer", "OLoRARegularizer", "REGULARIZER_CLASSES",
           "Regularizer", "TrainingStep", "build_regularizer", "task_lora_layers"]
