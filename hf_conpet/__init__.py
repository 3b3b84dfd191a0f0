"""hf_conpet: continual parameter-efficient tuning for Hugging Face models.

One LoRA module per task, stacked so that a batch whose examples belong to different tasks is
answered in one forward pass, and a learned selector that routes each example without a task id.
"""

__version__ = "0.1.0"

from .config import ConPetConfig  # noqa: E402
from .layers import RoutingPlan, TaskStackedLoraLinear  # noqa: E402
from .model import (  # noqa: E402
    ConPetModel,
    ConPetModelForCausalLM,
    ConPetModelForSeq2SeqLM,
    ConPetModelForSequenceClassification,
)

__all__ = [
    "ConPetConfig",
    "ConPetModel",
    "ConPetModelForCausalLM",
    "ConPetModelForSeq2SeqLM",
    "ConPetModelForSequenceClassification",
    "RoutingPlan",
    "TaskStackedLoraLinear",
]
