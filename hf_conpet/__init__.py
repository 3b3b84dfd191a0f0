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
from .data import Task, TaskStream  # noqa: E402
from .metrics import ContinualMetrics  # noqa: E402
from .callback import ContinualCallback  # noqa: E402
from .trainer import ContinualTrainer, attach_method  # noqa: E402
from .methods import METHODS, method_config  # noqa: E402

__all__ = [
    "ConPetConfig",
    "ConPetModel",
    "ConPetModelForCausalLM",
    "ConPetModelForSeq2SeqLM",
    "ConPetModelForSequenceClassification",
    "ContinualCallback",
    "ContinualMetrics",
    "ContinualTrainer",
    "METHODS",
    "RoutingPlan",
    "Task",
    "TaskStackedLoraLinear",
    "TaskStream",
    "attach_method",
    "method_config",
]
