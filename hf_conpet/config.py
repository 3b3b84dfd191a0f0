"""`ConPetConfig`: everything that shapes a continual PET system, serialisable to JSON.

Kept in the style of PEFT configs (a dataclass whose fields carry help text) so that it reads
like `LoraConfig`; unlike `LoraConfig` it describes *all* tasks of a stream at once, because every
task's LoRA must share one shape to be stacked.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
"""Version of the saved layout (`conpet_config.json`); bumped whenever a reader must change."""

SELECTORS = ("conpet", "analytic", "sapt", "none")
REGULARIZERS = ("none", "ewc", "lwf", "olora")
MEMORIES = ("all", "reservoir", "kmeans")
TRAIN_DATA = ("task", "replay", "all")
NEW_TASK_INITS = ("random", "previous")

# ConPET puts LoRA on the query and key projections. Names per architecture family; anything
# else is found by `resolve_target_modules` from the module names themselves.
QK_TARGETS_BY_MODEL_TYPE = {
    "llama": ["q_proj", "k_proj"],
    "mistral": ["q_proj", "k_proj"],
    "mixtral": ["q_proj", "k_proj"],
    "qwen2": ["q_proj", "k_proj"],
    "qwen3": ["q_proj", "k_proj"],
    "gemma": ["q_proj", "k_proj"],
    "gemma2": ["q_proj", "k_proj"],
    "phi3": ["qkv_proj"],
    "opt": ["q_proj", "k_proj"],
    "t5": ["q", "k"],
    "mt5": ["q", "k"],
    "bart": ["q_proj", "k_proj"],
    "bert": ["query", "key"],
    "roberta": ["query", "key"],
    "xlm-roberta": ["query", "key"],
    "distilbert": ["q_lin", "k_lin"],
}
_QK_NAME_PAIRS = (["q_proj", "k_proj"], ["query", "key"], ["q", "k"], ["q_lin", "k_lin"])


@dataclass
class ConPetConfig:
    """Shape of every task module, how examples are routed to them, and how training is composed."""

    r: int = field(default=4, metadata={"help": "LoRA rank of every task module (ConPET: 4)."})
    lora_alpha: float = field(
        default=8.0, metadata={"help": "LoRA alpha; the update is scaled by lora_alpha / r."}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Names (suffixes) of the nn.Linear modules that get task LoRAs. None: the "
            "query and key projections of the architecture, as in ConPET."
        },
    )
    selector: str = field(
        default="conpet",
        metadata={
            "help": "How an example without a task id is routed: 'conpet' (task classifier trained "
            "on replay, top-k), 'analytic' (closed-form ridge router over frozen features, top-k: "
            "keeps no examples and does not forget), 'sapt' (shared attention over task keys, soft "
            "weights) or 'none' (task ids must always be given: oracle routing)."
        },
    )
    top_k: int = field(default=1, metadata={"help": "Tasks each example is routed to (ConPET: 1)."})
    new_task_init: str = field(
        default="random",
        metadata={
            "help": "'random': a new task's LoRA starts like PEFT's (A Kaiming, B zero); "
            "'previous': it starts from the last task's weights (forward transfer)."
        },
    )
    train_data: str = field(
        default="task",
        metadata={
            "help": "What the module being trained learns from: 'task' (the new task's rows), 'replay' (ConPET's "
            "dynamic-replay batches of new and stored old rows: Static ConPET's shared module) or 'all' (every "
            "task at once: multitask). ConPET's selector trains on replay batches whatever this says."
        },
    )
    replay_ratio: float = field(
        default=1.0, metadata={"help": "New:old examples per replay batch (ConPET's r)."}
    )
    batches_per_task: int | None = field(
        default=None,
        metadata={"help": "Fixed training batches per task (dynamic replay); None: the Trainer's args."},
    )
    regularizer: str = field(
        default="none", metadata={"help": "Extra loss on a shared module: none, ewc, lwf, olora."}
    )
    regularizer_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of that loss; None: the regulariser's own default (O-LoRA 0.5, EWC 1, LwF 1)."},
    )
    memory: str = field(
        default="all",
        metadata={
            "help": "Which training rows of a finished task the replay memory keeps: 'all' (Static ConPET), "
            "'reservoir' (a uniform sample) or 'kmeans' (the row nearest each K-means centroid of the "
            "frozen backbone's prompt features, as ConPET's baselines kept exemplars)."
        },
    )
    memory_capacity: int | None = field(
        default=None, metadata={"help": "Rows per task kept by 'reservoir' and 'kmeans' (None with 'all')."}
    )
    selector_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of a selector that trains jointly with the task module (SAPT's "
            "query network and key); None: the Trainer's. Attention that must separate tasks "
            "within a few dozen steps needs a larger one than the LoRA weights."
        },
    )
    autocast_adapter_dtype: bool = field(
        default=True,
        metadata={
            "help": "As PEFT: under a bf16/fp16 base, create task modules in fp32 (True) or in the base "
            "dtype (False). `model.to(dtype)` later moves every module to that dtype either way."
        },
    )
    selector_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Selector-specific settings (hidden size, temperature, ARM lambda, ...)."},
    )

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.r, int) or self.r <= 0:
            problems.append(f"r must be a positive integer, got {self.r!r}")
        if not self.lora_alpha > 0:
            problems.append(f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                self.target_modules = [self.target_modules]
            if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
                problems.append(f"target_modules must be a non-empty list of names, got {self.target_modules!r}")
        if self.selector not in SELECTORS:
            problems.append(f"selector must be one of {SELECTORS}, got {self.selector!r}")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            problems.append(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.new_task_init not in NEW_TASK_INITS:
            problems.append(f"new_task_init must be one of {NEW_TASK_INITS}, got {self.new_task_init!r}")
        if not self.replay_ratio > 0:
            problems.append(f"replay_ratio must be > 0, got {self.replay_ratio!r}")
        if self.batches_per_task is not None and self.batches_per_task < 1:
            problems.append(f"batches_per_task must be >= 1 or None, got {self.batches_per_task!r}")
        if self.selector_learning_rate is not None and not (
            isinstance(self.selector_learning_rate, (int, float)) and self.selector_learning_rate > 0
        ):
            problems.append(f"selector_learning_rate must be > 0 or None, got {self.selector_learning_rate!r}")
        if self.regularizer not in REGULARIZERS:
            problems.append(f"regularizer must be one of {REGULARIZERS}, got {self.regularizer!r}")
        if self.regularizer_weight is not None and not (
            isinstance(self.regularizer_weight, (int, float)) and self.regularizer_weight >= 0
        ):
            problems.append(f"regularizer_weight must be >= 0 or None, got {self.regularizer_weight!r}")
        if self.train_data not in TRAIN_DATA:
            problems.append(f"train_data must be one of {TRAIN_DATA}, got {self.train_data!r}")
        if self.memory not in MEMORIES:
            problems.append(f"memory must be one of {MEMORIES}, got {self.memory!r}")
        elif self.memory == "all" and self.memory_capacity is not None:
            problems.append(f"memory='all' keeps every row; memory_capacity={self.memory_capacity!r} contradicts it")
        elif self.memory != "all" and not (
            isinstance(self.memory_capacity, int) and not isinstance(self.memory_capacity, bool) and self.memory_capacity >= 1
        ):
            problems.append(f"memory={self.memory!r} needs memory_capacity, a positive number of rows per task, "
                            f"got {self.memory_capacity!r}")
        if problems:
            raise ValueError("Invalid ConPetConfig: " + "; ".join(problems))

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ConPetConfig":
        """From JSON (a saved manifest): unknown keys and values of the wrong type are refused by name."""
        if not isinstance(values, dict):
            raise ValueError(f"A ConPetConfig must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown ConPetConfig keys: {unknown}; known keys are {sorted(known)}")
        problems = [problem for name, value in values.items() if (problem := _type_problem(name, value))]
        if problems:
            raise ValueError("Invalid ConPetConfig: " + "; ".join(problems))
        return cls(**values)

    def differences(self, other: "ConPetConfig") -> list[str]:
        """`field: this, other` for every field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{name}: {mine[name]!r} vs {theirs[name]!r}" for name in mine if mine[name] != theirs[name]]

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json_string(cls, text: str) -> "ConPetConfig":
        return cls.from_dict(json.loads(text))


_FIELD_TYPES = {
    "r": int, "lora_alpha": float, "lora_dropout": float, "target_modules": (list, type(None)), "selector": str,
    "top_k": int, "new_task_init": str, "replay_ratio": float, "batches_per_task": (int, type(None)),
    "regularizer": str, "regularizer_weight": (float, type(None)), "selector_learning_rate": (float, type(None)),
    "memory": str, "memory_capacity": (int, type(None)), "train_data": str,
    "autocast_adapter_dtype": bool, "selector_options": dict,
}


def _type_problem(name: str, value: Any) -> str | None:
    import math

    expected = _FIELD_TYPES.get(name)
    if expected is None:
        return None
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if value is None:
        return None if type(None) in kinds else f"{name} must not be null"
    if isinstance(value, bool):
        return None if bool in kinds else f"{name} must be a {kinds[0].__name__}, got {value!r}"
    if float in kinds and isinstance(value, (int, float)):
        return None if math.isfinite(value) else f"{name} must be finite, got {value!r}"
    if not isinstance(value, kinds):
        return f"{name} must be a {kinds[0].__name__}, got {type(value).__name__} {value!r}"[:200]
    return None


def resolve_target_modules(model, target_modules: list[str] | None) -> list[str]:
    """Full module paths of the nn.Linear layers that get task LoRAs.

    A name matches a module whose path equals it or ends with `.name` (PEFT's rule). With no
    names given, the architecture's query/key projections are used.
    """
    import torch.nn as nn

    linear_paths = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        candidates = [QK_TARGETS_BY_MODEL_TYPE[model_type]] if model_type in QK_TARGETS_BY_MODEL_TYPE else []
        candidates += list(_QK_NAME_PAIRS)
        for names in candidates:
            found = _match(linear_paths, names)
            if found:
                return found
        raise ValueError(
            f"Could not find query/key projections in a {model_type or type(model).__name__} model; "
            "pass target_modules=[...] with the names of its attention nn.Linear layers"
        )
    found = _match(linear_paths, target_modules)
    if not found:
        raise ValueError(
            f"target_modules {target_modules} match no nn.Linear layer of {type(model).__name__} "
            "(Conv1D-based models such as GPT-2 are not supported)"
        )
    return found


def _match(paths: list[str], names: list[str]) -> list[str]:
    return [p for p in paths if any(p == n or p.endswith("." + n) for n in names)]
