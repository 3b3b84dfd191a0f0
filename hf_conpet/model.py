"""`ConPetModel`: a `PeftModel` that grows one LoRA per task and routes every example in one forward.

Structure mirrors PEFT: `ConPetModel.base_model` is a tuner (`tuner.TaskStackedLoraModel`) whose
`.model` is the transformers model with its target `nn.Linear`s wrapped in
`TaskStackedLoraLinear`. Module paths therefore match PEFT's (`base_model.model.<path>`), which is
what lets each task be saved as a plain PEFT LoRA adapter. This module holds what a system *does*
(tasks, routing, forward, generate, the PeftModel contract); `saved_layout.py` what it writes and
reads, `base_models.py` which base it belongs to, `merging.py` its plain-model copies.

Why `PeftModel.__init__` is not called: it builds its tuner from `PeftType`, a closed enum that
refuses new methods. We set the few attributes PeftModel's own methods read and keep everything
else (`print_trainable_parameters`, attribute forwarding, `get_base_model`, Trainer's
`isinstance(model, PeftModel)` checks) as PEFT wrote it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, PeftType, TaskType
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from . import __version__, merging, saved_layout
from ._io import atomic_directory
from .names import validate_task_name
from .base_models import IncompatibleBaseModelError, base_model_fingerprint, base_model_id, check_base_model, load_base_model
from .config import FORMAT_VERSION, ConPetConfig
from .features import FeatureSpec, backbone_features, feature_size
from .heads import TaskStackedHead
from .layers import RoutingContext, RoutingPlan
from .saved_layout import MANIFEST_NAME, read_manifest
from .regularizers.base import TrainingStep
from .selectors import TaskSelector
from .tuner import TaskStackedLoraModel, adapter_dtype

__all__ = ["ConPetModel", "ConPetModelForCausalLM", "ConPetModelForSeq2SeqLM", "ConPetModelForSequenceClassification",
           "IncompatibleBaseModelError", "RoutingError", "TaskInfo", "MODEL_CLASSES"]


class RoutingError(ValueError):
    """Routing input (task ids, weights, missing selector) that cannot route this batch."""


@dataclass
class TaskInfo:
    """A registered task: what the manifest records about it, in stream order."""

    name: str
    labels: list[str] | None = None
    instruction: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "labels": self.labels, "instruction": self.instruction, "metadata": self.metadata}


class ConPetModel(PeftModel):
    """Base model + one LoRA per task + an optional selector; use a task-type subclass."""

    task_type: str = ""
    peft_task_type: TaskType | None = None
    auto_model_class = None

    def __init__(
        self,
        model: nn.Module,
        config: ConPetConfig | None = None,
        selector: TaskSelector | None = None,
        tokenizer=None,
    ) -> None:
        nn.Module.__init__(self)
        if type(self) is ConPetModel:
            raise TypeError("Use a task-type subclass: ConPetModelForCausalLM, ...ForSeq2SeqLM or ...ForSequenceClassification")
        self.conpet_config = config if config is not None else ConPetConfig()
        self.routing = RoutingContext()
        self.base_model = TaskStackedLoraModel(model, self.conpet_config, self.routing)
        self.tasks: list[TaskInfo] = []
        self.selector = selector
        self.regularizer = None  # e.g. O-LoRA / EWC penalty added to the training loss
        self.tokenizer = tokenizer
        # Attributes PeftModel's own methods read.
        self.peft_type = PeftType.LORA
        self.active_adapter = None
        self.special_peft_forward_args = set()
        self._is_prompt_learning = False
        self._peft_config = None

    # ----- tasks ------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def task_index(self, name: str) -> int:
        try:
            return self.task_names.index(name)
        except ValueError:
            raise KeyError(f"Unknown task {name!r}; registered tasks: {self.task_names}") from None

    def add_task(self, name: str, labels: list[str] | None = None, instruction: str | None = None, **metadata) -> TaskInfo:
        """Freeze every earlier task and open a new trainable LoRA (plus task head) for `name`."""
        # Everything that can be refused is checked before anything changes: a failed add_task
        # leaves the model exactly as it was.
        validate_task_name(name)
        if self.selector is not None:
            self._check_selector_size()
        if name in self.task_names:
            raise ValueError(f"Task {name!r} is already registered (tasks: {self.task_names})")
        if labels is not None and (isinstance(labels, str) or not all(isinstance(label, str) for label in labels)
                                   or len(set(labels)) != len(labels)):
            raise ValueError(f"Task {name!r}: labels must be a list of distinct strings, got {labels!r}")
        if instruction is not None and not isinstance(instruction, str):
            raise ValueError(f"Task {name!r}: instruction must be a string, got {type(instruction).__name__}")
        self._check_task_head(name, labels)
        init_from = self.num_tasks - 1 if self.conpet_config.new_task_init == "previous" and self.tasks else None
        for layer in self.base_model.lora_layers().values():
            layer.add_task(init_from=init_from)
        task = TaskInfo(name=name, labels=list(labels) if labels is not None else None, instruction=instruction, metadata=dict(metadata))
        self.tasks.append(task)
        self._add_task_head(task)
        self.base_model.peft_config[name] = self._lora_config()
        self.active_adapter = name
        if self.selector is not None:
            self.selector.add_task()
        self.set_trainable(task=True, selector=self.selector is not None and self.selector.routes_in_training)
        return task

    def _live_task(self) -> int | None:
        """Index of the task being trained (its module is a Parameter), or None when all are frozen."""
        layer = next(iter(self.base_model.lora_layers().values()))
        return self.num_tasks - 1 if layer.live_lora_A is not None else None

    def freeze_tasks(self) -> None:
        """Freeze the task being trained (done implicitly by the next `add_task`)."""
        for layer in self.base_model.lora_layers().values():
            layer.freeze_live()
        self._freeze_heads()
        if self.selector is not None and hasattr(self.selector, "freeze_live"):
            self.selector.freeze_live()  # SAPT: the task's key freezes with its LoRA

    def thaw_last_task(self) -> None:
        """Make the last task trainable again (resuming a stream that trains one shared module)."""
        if not self.tasks:
            raise ValueError("No task to thaw")
        for layer in self.base_model.lora_layers().values():
            layer.thaw_last()
        self._thaw_last_head()
        self.set_trainable(task=True, selector=False)

    def set_trainable(self, task: bool = True, selector: bool = False) -> None:
        """Choose what the next optimizer sees: the live task's module, the selector, or both."""
        for name, parameter in self.named_parameters():
            if name.startswith("selector."):
                parameter.requires_grad_(selector)
            else:
                parameter.requires_grad_(task and self._is_live_task_parameter(name))

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The live task's own parameters (LoRA pairs and task head), by name."""
        return {name: p for name, p in self.named_parameters() if self._is_live_task_parameter(name)}

    def _is_live_task_parameter(self, name: str) -> bool:
        return ".live_lora_" in name or ".live_head" in name

    # ----- routing ----------------------------------------------------------------------------
    def routing_plan(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        routing_weights: torch.Tensor | None = None,
        batch_size: int | None = None,
        routing_plan: RoutingPlan | None = None,
    ) -> RoutingPlan:
        """Turn task ids, explicit weights or the selector's verdict into one plan for the batch."""
        if routing_plan is not None:
            return self._checked_plan(routing_plan, batch_size if batch_size is not None else
                                      (input_ids.shape[0] if input_ids is not None else None))
        if self.num_tasks == 0:
            raise RoutingError("The model has no tasks yet: call add_task(...) first")
        if batch_size is None and input_ids is not None:
            batch_size = input_ids.shape[0]
        if task_ids is not None and routing_weights is not None:
            raise RoutingError("Pass task_ids or routing_weights, not both")
        if task_ids is not None:
            task_ids = torch.as_tensor(task_ids).view(-1)
            if batch_size is not None and task_ids.numel() != batch_size:
                raise RoutingError(f"task_ids has {task_ids.numel()} entries for a batch of {batch_size}")
            if task_ids.dtype.is_floating_point or task_ids.dtype == torch.bool:
                raise RoutingError(f"task_ids must be integers, got {task_ids.dtype}")
            if task_ids.numel() and (task_ids.min() < 0 or task_ids.max() >= self.num_tasks):
                raise RoutingError(
                    f"task_ids out of range: got values in [{int(task_ids.min())}, {int(task_ids.max())}] "
                    f"but only {self.num_tasks} tasks are registered (0..{self.num_tasks - 1})"
                )
            return RoutingPlan.from_task_ids(task_ids.to(self._device))
        if routing_weights is not None:
            routing_weights = torch.as_tensor(routing_weights, device=self._device)
            expected = (batch_size if batch_size is not None else routing_weights.shape[0], self.num_tasks)
            if routing_weights.dim() != 2 or tuple(routing_weights.shape) != expected:
                raise RoutingError(
                    f"routing_weights must have shape [batch, num_tasks] = {list(expected)}, "
                    f"got {list(routing_weights.shape)}"
                )
            if routing_weights.is_floating_point() and not torch.isfinite(routing_weights).all():
                raise RoutingError("routing_weights hold NaN or inf values")
            return RoutingPlan(weights=routing_weights.float())
        if self.selector is None:
            raise RoutingError(
                "No task_ids, no routing_weights and no selector: this model cannot choose a task "
                "module by itself (set a selector, or pass task_ids for oracle routing)"
            )
        if input_ids is None:
            raise RoutingError("The selector routes from input_ids; none were given")
        return self.selector.plan(self.selector_features(input_ids, attention_mask), self.conpet_config.top_k)

    def _checked_plan(self, plan: RoutingPlan, batch_size: int | None) -> RoutingPlan:
        """A plan given from outside, checked once per call (the layers never clamp or guess)."""
        if batch_size is not None and batch_size % plan.batch_size:
            raise RoutingError(f"The routing plan is for a batch of {plan.batch_size} examples, the call has {batch_size}")
        width = plan.weights.shape[-1]
        if plan.indices is None and width != self.num_tasks:
            raise RoutingError(f"The routing plan weighs {width} tasks but {self.num_tasks} are registered")
        if plan.single_task is not None and not 0 <= plan.single_task < self.num_tasks:
            raise RoutingError(f"The routing plan names task {plan.single_task} but only {self.num_tasks} tasks are registered")
        if plan.indices is not None and plan.indices.numel() and (int(plan.indices.min()) < 0 or int(plan.indices.max()) >= self.num_tasks):
            raise RoutingError(
                f"The routing plan names task indices in [{int(plan.indices.min())}, {int(plan.indices.max())}] "
                f"but only {self.num_tasks} tasks are registered (0..{self.num_tasks - 1})"
            )
        return plan

    def route(self, inputs, tokenizer=None) -> torch.Tensor:
        """Per-example task probabilities [batch, T] from the selector, for texts or input ids."""
        if self.selector is None:
            raise RoutingError("This model has no selector to route with")
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)):
            tokenizer = tokenizer or self.tokenizer
            if tokenizer is None:
                raise ValueError("route(texts) needs a tokenizer: pass tokenizer=... or set model.tokenizer")
            encoded = tokenizer(list(inputs), return_tensors="pt", padding=True)
            input_ids, attention_mask = encoded["input_ids"], encoded.get("attention_mask")
        else:
            input_ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask")
        _check_prompts(input_ids, attention_mask)
        with torch.no_grad():
            return self.selector.task_probabilities(self.selector_features(
                input_ids.to(self._device), None if attention_mask is None else attention_mask.to(self._device)))

    def prompt_features(self, input_ids: torch.Tensor, prompt_mask: torch.Tensor | None = None,
                        spec: FeatureSpec | None = None) -> torch.Tensor:
        """[batch, d] features of the prompts on the frozen backbone (no task module), as `spec`
        (default: the selector's) names them. What a selector reads; the same at every task count."""
        spec = spec if spec is not None else self._selector_or_raise().feature_spec
        with self.routing.use(None):
            return backbone_features(self.get_base_model(), input_ids, prompt_mask, spec)

    def selector_features(self, input_ids: torch.Tensor, prompt_mask: torch.Tensor | None) -> torch.Tensor:
        """The selector's features of a batch, after checking that it has one output per task."""
        self._check_selector_size()
        return self.prompt_features(input_ids, prompt_mask)

    def feature_size(self, spec: FeatureSpec) -> int:
        return feature_size(self.get_base_model(), spec)

    def _selector_or_raise(self) -> TaskSelector:
        if self.selector is None:
            raise RoutingError("This model has no selector to route with")
        return self.selector

    def _check_selector_size(self) -> None:
        selector = self._selector_or_raise()
        if selector.num_tasks != self.num_tasks:
            raise RoutingError(
                f"The {selector.kind} selector has outputs for {selector.num_tasks} tasks but the model has "
                f"{self.num_tasks}: they must grow together (attach the selector before the first add_task, or "
                "load it with the system it was saved with)"
            )

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def _device(self) -> torch.device:
        return next(self.base_model.model.parameters()).device

    # ----- forward / generate -----------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, task_ids=None, routing_weights=None, routing_plan=None, **kwargs):
        """Run the base model with each example routed to its own task module(s).

        In training, a selector that learns jointly with the task module (SAPT) supplies the plan
        and an auxiliary loss; otherwise task ids route (teacher forcing), as in ConPET. The
        auxiliary and regulariser terms are added to every loss the model returns, weighted by this
        micro-batch's share of `num_items_in_batch` (what the Trainer passes under gradient
        accumulation), so an optimizer step counts each of them once, however it is accumulated.
        """
        if input_ids is not None and input_ids.dim() == 2 and input_ids.shape[1] == 0:
            raise ValueError("input_ids has no tokens (an empty prompt): give every example at least one token")
        batch_size = _batch_size(input_ids, kwargs.get("inputs_embeds"))
        labels, num_items = kwargs.get("labels"), kwargs.get("num_items_in_batch")
        if self.routing.adapters_disabled:  # the base model alone, its own loss included
            with self.routing.use(None):
                return self.get_base_model()(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        auxiliary_loss = None
        if self.training and self.selector is not None and self.selector.routes_in_training and routing_weights is None:
            prompt_mask = self.prompt_mask(input_ids, attention_mask, labels)
            plan, auxiliary_loss = self.selector.training_plan(self.selector_features(input_ids, prompt_mask), task_ids)
        elif self.training and task_ids is None and routing_weights is None and routing_plan is None and self._live_task() is not None:
            # A training batch without task ids (TRL's SFTTrainer, a user's own collator) trains the task
            # being trained: the only module that can learn.
            plan = RoutingPlan.from_task_ids(torch.full((batch_size,), self._live_task(), dtype=torch.long, device=self._device))
        else:
            plan = self.routing_plan(input_ids, attention_mask, task_ids, routing_weights, batch_size, routing_plan)
        base_inputs = dict(input_ids=input_ids, attention_mask=attention_mask, **self._base_kwargs(kwargs))
        with self.routing.use(plan):
            output = self.base_model(**base_inputs)
        loss = self._task_loss(output, labels, num_items)
        if loss is not None and self.training:
            penalty = None
            if self.regularizer is not None:
                penalty = self.regularizer.penalty(self, self._training_step(output, labels, plan, base_inputs))
            extra = [auxiliary_loss, penalty]
            extra = [term for term in extra if term is not None]
            if extra:
                loss = loss + self._micro_batch_share(labels, num_items) * sum(extra)
        if loss is not None:
            output.loss = loss
        return output

    def _training_step(self, output, labels, plan, base_inputs) -> TrainingStep:
        """What a regulariser may read of this step; `rerun` repeats the forward with some parameters of
        `base_model` replaced (torch.func.functional_call), without gradient and routed the same way."""

        def rerun(parameters):
            with torch.no_grad(), self.routing.use(plan):
                return torch.func.functional_call(self.base_model, parameters, args=(), kwargs=base_inputs, strict=False)

        return TrainingStep(logits=getattr(output, "logits", None), labels=labels, task_type=self.task_type, rerun=rerun)

    def _base_kwargs(self, kwargs: dict) -> dict:
        """What the base model's own forward receives (its loss included)."""
        return kwargs

    def _task_loss(self, output, labels, num_items) -> torch.Tensor | None:
        """The task loss; the base model computed it (normalised by `num_items_in_batch` when given)."""
        return getattr(output, "loss", None)

    def _micro_batch_share(self, labels, num_items) -> float | torch.Tensor:
        """This micro-batch's share of the optimizer step's label items (1 without accumulation),
        counted as the Trainer counts them (causal LMs predict from the second position on)."""
        if labels is None or num_items is None:
            return 1.0
        counted = labels[..., 1:] if self.task_type == "causal_lm" else labels
        return counted.ne(-100).sum().to(torch.float32) / torch.as_tensor(num_items, dtype=torch.float32, device=labels.device)

    def prompt_mask(self, input_ids, attention_mask=None, labels=None) -> torch.Tensor:
        """Which input tokens are prompt: what a selector may look at (never the answer).

        For a causal LM training batch the target follows the prompt in `input_ids`; the
        collator marks prompt and padding with label -100, so prompt = attended & unlabelled.
        """
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if labels is not None and self.task_type == "causal_lm" and labels.shape == input_ids.shape:
            mask = mask & (labels == -100)
        return mask

    def generate(self, input_ids=None, attention_mask=None, task_ids=None, routing_weights=None, routing_plan=None, **kwargs):
        """Route once on the prompt; every decoding step (KV cache on) keeps those weights."""
        _check_prompts(input_ids, attention_mask)
        batch_size = _batch_size(input_ids, kwargs.get("inputs_embeds"))
        if self.routing.adapters_disabled:
            plan = None
        else:
            plan = self.routing_plan(input_ids, attention_mask, task_ids, routing_weights, batch_size, routing_plan)
        with self.routing.use(plan):
            return self.base_model.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """The base model's activation (gradient) checkpointing, made to recompute with the call's
        routing plan (non-reentrant, with `RoutingContext.checkpoint_contexts`): without it, backward
        would recompute the checkpointed layers without any task module. What `Trainer` and TRL call."""
        kwargs = dict(activation_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant"):
            raise ValueError("hf_conpet needs use_reentrant=False for gradient checkpointing (the routing plan "
                             "is restored in the recomputation through context_fn)")
        kwargs.update(use_reentrant=False, context_fn=self.routing.checkpoint_contexts)
        self.get_base_model().activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **options) -> None:
        """transformers' older name for `activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **options)

    def get_base_model(self) -> nn.Module:
        return self.base_model.model

    @property
    def active_peft_config(self) -> LoraConfig:
        """The LoRA config every task shares (PEFT asks for "the active adapter's" config)."""
        return self._lora_config()

    # ----- the PeftModel contract ----------------------------------------------------------------
    @property
    def _adapters_disabled(self) -> bool:  # what PeftModel's own properties read
        return self.routing.adapters_disabled

    @contextmanager
    def disable_adapter(self):
        """Inside the block, calls run the base model alone: no task module, no selector, the base
        model's own head and loss (PEFT's meaning; TRL computes reference outputs this way). Per call,
        like routing: another thread's calls are not affected."""
        with self.routing.disabled():
            yield

    def merge_task(self, name: str) -> nn.Module:
        """A plain transformers model answering as task `name`: its LoRA merged into the base weights
        (W + scaling * B A) and, for classification, its head as the classifier. A copy: this system
        is unchanged. Its outputs equal this model's routed to `name`."""
        index = self.task_index(name)
        merged = merging.unwrapped_copy(self, index)
        merged.config.hf_conpet_task = name
        return merged

    def unload(self) -> nn.Module:
        """A copy of the base model with every task module removed (PEFT's `unload`)."""
        return merging.unwrapped_copy(self, None)

    def merge_and_unload(self, *args, **kwargs) -> nn.Module:
        """PEFT's merge of *the* adapter; here only when the system has one task (else `merge_task`)."""
        if self.num_tasks != 1:
            raise ValueError(
                f"This system has {self.num_tasks} task modules, one per task and routed per input; merging them "
                "all into the base weights would answer every input with their sum. Call merge_task(name) for "
                f"one task's plain model (tasks: {self.task_names}), or unload() for the base model"
            )
        return self.merge_task(self.task_names[0])

    def get_model_status(self):
        raise NotImplementedError(
            "get_model_status() describes PEFT's named adapters; an hf_conpet system has one module per task: "
            "see model.task_names, model.manifest() and model.print_trainable_parameters()"
        )

    def get_layer_status(self):
        raise NotImplementedError(
            "get_layer_status() describes PEFT's named adapters; every LoRA'd layer here holds all tasks: "
            "see model.base_model.lora_layers() (each layer's num_tasks) and model.task_names"
        )

    def _unwrap_heads(self, copied: nn.Module, index: int | None) -> None:
        pass

    # ----- PEFT methods that do not apply ----------------------------------------------------
    def add_adapter(self, *args, **kwargs):
        raise NotImplementedError("ConPetModel grows through add_task(name, ...), not add_adapter")

    def load_adapter(self, *args, **kwargs):
        raise NotImplementedError("ConPetModel loads whole systems with from_pretrained(...)")

    def set_adapter(self, *args, **kwargs):
        raise NotImplementedError("ConPetModel routes per example: pass task_ids or use the selector")

    # ----- task heads (sequence classification overrides these) -------------------------------
    def _check_task_head(self, name: str, labels: list[str] | None) -> None:
        """Refuse, before anything changes, a task the head cannot take (classification: no labels)."""

    def _add_task_head(self, task: TaskInfo) -> None:
        pass

    def _freeze_heads(self) -> None:
        pass

    def _thaw_last_head(self) -> None:
        pass

    def _task_head_state(self, index: int) -> dict[str, torch.Tensor]:
        return {}

    def _load_task_head(self, index: int, state: dict[str, torch.Tensor]) -> None:
        pass

    def _lora_config(self) -> LoraConfig:
        config = self.conpet_config
        targets = sorted({path.rpartition(".")[2] for path in self.base_model.target_paths})
        return LoraConfig(
            r=config.r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets,
            bias="none",
            task_type=self.peft_task_type,
            base_model_name_or_path=base_model_id(self.base_model.model),
            inference_mode=True,
            modules_to_save=self._modules_to_save(),
        )

    def _modules_to_save(self) -> list[str] | None:
        return None

    # ----- save / load ------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, metrics: dict | None = None,
                        examples: dict[str, list[str]] | None = None, **kwargs) -> None:
        """Write the saved layout atomically (temp dir + rename). `examples` ({task: [input, ...]}, a
        few test inputs per task) are saved for the demo to offer; leave them out for private data.
        Extra Trainer kwargs are ignored."""
        if self.num_tasks == 0:
            raise ValueError("Nothing to save: the model has no tasks")
        with atomic_directory(save_directory) as staging:
            self.write_layout(staging, metrics=metrics, examples=examples)

    def write_layout(self, directory: str | os.PathLike, metrics: dict | None = None,
                     examples: dict[str, list[str]] | None = None) -> None:
        """Write manifest, `tasks/<name>/` PEFT adapters, `selector/` (and examples) into an existing directory."""
        saved_layout.write_layout(self, Path(directory), metrics, examples)

    def task_state(self, index: int) -> dict[str, torch.Tensor]:
        """Task `index` as a PEFT LoRA state dict (`base_model.model.<path>.lora_A.weight`, ..., and its head)."""
        tensors = {}
        for path, layer in self.base_model.lora_layers().items():
            A, B = layer.task_weights(index)
            tensors[f"base_model.model.{path}.lora_A.weight"], tensors[f"base_model.model.{path}.lora_B.weight"] = A, B
        tensors.update(self._task_head_state(index))
        return tensors

    def manifest(self, metrics: dict | None = None) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "library": "hf_conpet",
            "library_version": __version__,
            "task_type": self.task_type,
            "base_model": base_model_fingerprint(self.base_model.model, self.base_model.target_paths),
            "config": self.conpet_config.to_dict(),
            "tasks": [task.to_dict() for task in self.tasks],
            "selector": None if self.selector is None else self.selector.kind,
            "metrics": metrics,
        }

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        metrics: Any = None,
        endpoint: str | None = None,
        examples: dict[str, list[str]] | None = None,
    ):
        """Upload the whole system (layout, model card, accuracy plot) to `repo_id` as ONE commit.

        Overrides PeftModel's / transformers' `push_to_hub`, which would push a single adapter
        under a generic card. One commit means a failed push (`HubPushError`) leaves the repo as it
        was. `metrics` (a dict or `ContinualMetrics`) feed the manifest and the card; by default,
        those this system was loaded with, while its task list is unchanged. Returns the
        `CommitInfo`, or None on every process but the main one (accelerate / torchrun).
        """
        import tempfile

        from . import hub
        from .model_card import write_model_card

        if not hub.is_main_process():  # rank 0 pushes; the others need not even write the layout
            return None
        if self.num_tasks == 0:
            raise ValueError("Nothing to push: the model has no tasks")
        if metrics is None:
            loaded_tasks, loaded_metrics = getattr(self, "_loaded_metrics", ((), None))
            metrics = loaded_metrics if list(loaded_tasks) == self.task_names else None
        elif hasattr(metrics, "to_dict"):
            metrics = metrics.to_dict()
        with tempfile.TemporaryDirectory(prefix="hf_conpet_push_") as folder:
            self.write_layout(folder, metrics=metrics, examples=examples)
            write_model_card(folder, repo_id)
            return hub.push_folder(
                folder, repo_id, private=private, token=token, revision=revision,
                commit_message=commit_message, create_pr=create_pr, endpoint=endpoint,
            )

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike,
        base_model: nn.Module | None = None,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        strict_base_model_id: bool = True,
        strict_base_weights: bool = True,
        endpoint: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        **base_kwargs,
    ) -> "ConPetModel":
        """Load a whole system: base model (from the manifest unless given), every task, the selector.

        `model_id_or_path` is a local folder or a Hub repo id (fetched from `endpoint`, else
        `HF_ENDPOINT` read at call time). `token`, `endpoint` and `cache_dir` also serve the base
        model's download; `base_kwargs` go to its `from_pretrained` (e.g. `dtype`). A `base_model`
        whose weights are not the ones the system was trained on (told by a sample of its weights
        recorded in the manifest, tolerant of dtype and quantization) is refused unless
        `strict_base_weights=False`; on any failure `base_model` is left unwrapped.
        """
        directory = saved_layout.resolve_system_dir(model_id_or_path, revision=revision, token=token, endpoint=endpoint, cache_dir=cache_dir)
        manifest = read_manifest(directory)
        if manifest["task_type"] != cls.task_type:
            raise ValueError(
                f"{directory} holds a {manifest['task_type']!r} system; load it with the matching class, "
                f"not {cls.__name__} ({cls.task_type!r})"
            )
        tokenizer = None
        if base_model is None:
            base_id = manifest["base_model"].get("name_or_path")
            if not base_id:
                raise ValueError(f"{directory}/{MANIFEST_NAME} records no base model id: pass base_model=...")
            base_model, tokenizer = load_base_model(
                cls.auto_model_class, base_id, manifest["base_model"].get("revision"), base_kwargs,
                token=token, endpoint=endpoint, cache_dir=cache_dir,
            )
        config = _manifest_config(manifest, directory)
        model = cls(base_model, config, tokenizer=tokenizer)  # refuses before touching base_model (tuner.py)
        try:
            model.load_system(directory, strict_base_model_id=strict_base_model_id,
                              strict_base_weights=strict_base_weights, manifest=manifest)
        except BaseException:
            model.base_model.restore_base_model()  # the caller's base_model is theirs again, as it was
            raise
        # kept for push_to_hub's card, which uses them only while the task list is unchanged
        model._loaded_metrics = (tuple(model.task_names), manifest.get("metrics"))
        return model

    def load_system(self, directory: str | os.PathLike, strict_base_model_id: bool = True,
                    manifest: dict | None = None, strict_base_weights: bool = True) -> None:
        """Load every task and the selector of a saved system into this (task-less) model.
        Everything read is checked (types, shapes, finiteness) before the model changes."""
        directory = Path(directory)
        manifest = manifest or read_manifest(directory)
        if self.tasks:
            raise ValueError("load_system needs a model without tasks")
        saved_config = _manifest_config(manifest, directory)
        if saved_config != self.conpet_config:
            raise ValueError(f"{directory / MANIFEST_NAME} was saved with another ConPetConfig than this model's: "
                             + "; ".join(saved_config.differences(self.conpet_config)) + " (saved vs this model)")
        check_base_model(manifest["base_model"], base_model_fingerprint(self.base_model.model, self.base_model.target_paths),
                         strict_base_model_id, strict_base_weights)
        states = [saved_layout.read_task_state(directory, entry["name"]) for entry in manifest["tasks"]]
        for entry, (weights_path, tensors) in zip(manifest["tasks"], states):
            self._check_task_tensors(entry, weights_path, tensors)
        selector = None
        if manifest.get("selector"):
            selector = saved_layout.load_selector(directory / saved_layout.SELECTOR_DIR, manifest["selector"], self._device,
                                                  num_tasks=len(manifest["tasks"]), feature_size=self.feature_size)
        for entry, (weights_path, tensors) in zip(manifest["tasks"], states):
            self._load_task(entry, tensors)
        self.selector = selector
        self.active_adapter = self.task_names[-1] if self.tasks else None
        self.set_trainable(task=False, selector=False)

    def _check_task_tensors(self, entry: dict[str, Any], weights_path: Path, tensors: dict[str, torch.Tensor]) -> None:
        """Every tensor a task needs is there with this model's shapes (checked before any is loaded)."""
        expected = {f"base_model.model.{path}.lora_{part}.weight": shape
                    for path, layer in self.base_model.lora_layers().items()
                    for part, shape in (("A", (layer.r, layer.in_features)), ("B", (layer.out_features, layer.r)))}
        expected.update(self._task_head_shapes(entry))
        for key, shape in expected.items():
            if key not in tensors:
                raise ValueError(f"{weights_path} lacks {key}: it does not fit this base model")
            if shape is not None and tuple(tensors[key].shape) != shape:
                raise ValueError(f"{weights_path}: {key} has shape {list(tensors[key].shape)}, this model needs {list(shape)}")

    def _task_head_shapes(self, entry: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {}

    def _load_task(self, entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        index = self.num_tasks
        for path, layer in self.base_model.lora_layers().items():
            key = f"base_model.model.{path}"
            layer.load_frozen(tensors.pop(f"{key}.lora_A.weight"), tensors.pop(f"{key}.lora_B.weight"))
        task = TaskInfo(name=entry["name"], labels=entry.get("labels"), instruction=entry.get("instruction"),
                        metadata=entry.get("metadata") or {})
        self.tasks.append(task)
        self._add_task_head(task)
        self._load_task_head(index, tensors)
        self._freeze_heads()
        self.base_model.peft_config[task.name] = self._lora_config()


def _manifest_config(manifest: dict[str, Any], directory: Path) -> ConPetConfig:
    try:
        return ConPetConfig.from_dict(manifest["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{Path(directory) / MANIFEST_NAME}: field 'config': {error}") from None


class ConPetModelForCausalLM(ConPetModel):
    task_type = "causal_lm"
    peft_task_type = TaskType.CAUSAL_LM
    auto_model_class = AutoModelForCausalLM


class ConPetModelForSeq2SeqLM(ConPetModel):
    task_type = "seq2seq_lm"
    peft_task_type = TaskType.SEQ_2_SEQ_LM
    auto_model_class = AutoModelForSeq2SeqLM


class ConPetModelForSequenceClassification(ConPetModel):
    """Each task gets a head over its own labels; logits span the union of all tasks' labels.

    `labels` are indices into that union (`label_offset(task) + local index`); the loss is
    computed here because the base model's own loss assumes its original `num_labels`.
    """

    task_type = "sequence_classification"
    peft_task_type = TaskType.SEQ_CLS
    auto_model_class = AutoModelForSequenceClassification
    classifier_names = ("classifier", "score")

    def __init__(self, model: nn.Module, config: ConPetConfig | None = None, selector: TaskSelector | None = None, tokenizer=None):
        names = [name for name in self.classifier_names if isinstance(getattr(model, name, None), nn.Linear)]
        if not names:  # refused before the base model is touched
            raise ValueError(f"{type(model).__name__} has no nn.Linear classifier named one of {self.classifier_names}")
        super().__init__(model, config, selector, tokenizer)
        self.classifier_name = names[0]
        head = getattr(model, self.classifier_name)
        dtype = adapter_dtype(head.weight.dtype, self.conpet_config.autocast_adapter_dtype)
        self.base_model.replace_module(self.classifier_name, TaskStackedHead(head, self.routing, dtype=dtype))

    @property
    def head(self) -> TaskStackedHead:
        return getattr(self.base_model.model, self.classifier_name)

    def label_offset(self, task: str | int) -> int:
        return self.head.label_offset(task if isinstance(task, int) else self.task_index(task))

    def _unwrap_heads(self, copied: nn.Module, index: int | None) -> None:
        stacked = getattr(copied, self.classifier_name)
        if index is None:
            setattr(copied, self.classifier_name, stacked.base_head)
            return
        setattr(copied, self.classifier_name, self.head.task_linear(index))
        labels = self.tasks[index].labels
        copied.config.num_labels = len(labels)
        copied.config.id2label = dict(enumerate(labels))
        copied.config.label2id = {label: i for i, label in enumerate(labels)}

    def _base_kwargs(self, kwargs: dict) -> dict:
        # the base model's own loss assumes its original num_labels: the loss is computed here
        return {k: v for k, v in kwargs.items() if k not in ("labels", "num_items_in_batch")}

    def _task_loss(self, output, labels, num_items) -> torch.Tensor | None:
        if labels is None:
            return None
        logits, targets = output.logits.float(), labels.to(output.logits.device).view(-1)
        if num_items is None:
            return nn.functional.cross_entropy(logits, targets)
        return nn.functional.cross_entropy(logits, targets, reduction="sum") / torch.as_tensor(num_items, device=logits.device)

    def _check_task_head(self, name: str, labels: list[str] | None) -> None:
        if not labels:
            raise ValueError(f"Task {name!r} needs labels=[...] for sequence classification: a classification head "
                             "learns a closed label set, not free text (use ConPetModelForCausalLM or ForSeq2SeqLM)")

    def _add_task_head(self, task: TaskInfo) -> None:
        self._check_task_head(task.name, task.labels)
        self.head.add_task(len(task.labels))

    def _task_head_shapes(self, entry: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        labels = entry.get("labels")
        if not labels:
            raise ValueError(f"Task {entry['name']!r} of a sequence-classification system lists no labels in the manifest")
        key = f"base_model.model.{self.classifier_name}"
        shapes = {f"{key}.weight": (len(labels), self.head.in_features)}
        if self.head.has_bias:
            shapes[f"{key}.bias"] = (len(labels),)
        return shapes

    def _freeze_heads(self) -> None:
        self.head.freeze_live()

    def _thaw_last_head(self) -> None:
        self.head.thaw_last()

    def _modules_to_save(self) -> list[str] | None:
        return [self.classifier_name]

    def _task_head_state(self, index: int) -> dict[str, torch.Tensor]:
        weight, bias = self.head.task_state(index)
        state = {f"base_model.model.{self.classifier_name}.weight": weight}
        if bias is not None:
            state[f"base_model.model.{self.classifier_name}.bias"] = bias
        return state

    def _load_task_head(self, index: int, state: dict[str, torch.Tensor]) -> None:
        key = f"base_model.model.{self.classifier_name}"
        if f"{key}.weight" not in state:
            raise ValueError(f"Task {self.tasks[index].name!r} has no saved head ({key}.weight)")
        self.head.load_frozen(state[f"{key}.weight"], state.get(f"{key}.bias"))


MODEL_CLASSES: dict[str, type[ConPetModel]] = {
    cls.task_type: cls for cls in (ConPetModelForCausalLM, ConPetModelForSeq2SeqLM, ConPetModelForSequenceClassification)
}


# ----- helpers: manifest, base model identity, selector loading -------------------------------
def _check_prompts(input_ids, attention_mask) -> None:
    """A clear error for empty prompts (transformers would fail later in a reshape)."""
    if input_ids is None:
        return
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"Empty prompt: input_ids must be [batch, seq] with at least one token, got shape {list(input_ids.shape)}")
    if attention_mask is not None:
        empty = (attention_mask.sum(dim=-1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"Empty prompt: example(s) {empty[:5]} of the batch have no attended token")


def _batch_size(input_ids, inputs_embeds) -> int | None:
    if input_ids is not None:
        return input_ids.shape[0]
    if inputs_embeds is not None:
        return inputs_embeds.shape[0]
    return None





