"""What every `hf-conpet` command shares: names of the run's files, the defaults, the one-line error."""

from __future__ import annotations

from typing import Any

from ..memory import DEFAULT_MEMORY_BUDGET
from ..names import CHECKPOINT_DIR  # noqa: F401  (the run's checkpoint: refused as an output, resumed)

PROG = "hf-conpet"
DEFAULT_OUTPUT = "hf-conpet-run"
SYSTEM_DIR = "model"
METRICS_FILE = "metrics.json"
LOG_FILE = "run.log"
RUN_ARGS_FILE = "run_args.json"

#: Settings of `run` when neither the command line nor (with --resume) the recorded run gives
#: them. `model` / `data_dir` None mean the embedded offline defaults; `tasks` None means the
#: default benchmark's order (or every task folder of `--data-dir`, sorted). The LoRA shape and
#: optimiser are those measured for SmolLM2-135M (DESIGN.md): r=8, alpha 16 on q/v, lr 5e-4.
DEFAULTS: dict[str, Any] = {
    "model": None,
    "data_dir": None,
    "stream": None,
    "tasks": None,
    "method": "conpet",
    "max_steps_per_task": 25,
    "batch_size": 8,
    "learning_rate": 5e-4,
    "max_length": 192,
    "max_eval_examples": 32,
    "max_train_examples": None,
    "template": "default",
    "seed": 0,
    "r": 8,
    "lora_alpha": 16.0,
    "targets": ["q_proj", "v_proj"],
    "new_task_init": "previous",
    "examples_per_task": 3,
    "memory_budget": DEFAULT_MEMORY_BUDGET,
    "memory": "all",
    "memory_capacity": None,
    "regularizer_weight": None,
}
#: Settings that may change on --resume: they shape only what is published, not what is trained.
PUBLISHING_SETTINGS = ("examples_per_task",)


class CliError(Exception):
    """A problem the user can fix: printed as one line, no traceback."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(" ".join(str(message).split()))
        self.status = status


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = " ".join(str(error.args[0]).split())
    return text or type(error).__name__


def load_base(model: str | None):
    """(base model, tokenizer) offline-capable; the manifest then records the base model's Hub id."""
    from ..default_model import DefaultModelUnavailable, canonical_model_id, is_default_model, load_base_model

    from transformers.utils import logging as hf_logging

    name = "the embedded default model" if is_default_model(model) else repr(model)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a sub-second "Loading weights" bar is noise (and not one line)
    try:
        base, tokenizer = load_base_model(model)
    except DefaultModelUnavailable as error:
        raise CliError(f"cannot load {name}: {one_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - whatever transformers raises, the user gets one line
        raise CliError(f"cannot load model {name}: {type(error).__name__}: {one_line(error)}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # The converted default lives in a machine-specific cache; record its Hub id instead.
    base.config._name_or_path = canonical_model_id(base)
    return base, tokenizer
