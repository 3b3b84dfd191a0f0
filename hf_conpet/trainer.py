"""`ContinualTrainer`: the task loop of a continual run, for users who do not want to write it.

    trainer = ContinualTrainer(model, stream, TrainingArguments("out", learning_rate=5e-4, ...),
                               method="conpet", batches_per_task=60)
    metrics = trainer.fit()          # resumes from out/checkpoint if a run was interrupted

Each task gets its own stock `transformers.Trainer` (its optimizer must see the task's freshly
added parameters); `ContinualCallback` does the between-task work.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

from .callback import ContinualCallback
from .checkpoint import ResumeMismatchError
from .evaluation import generation_budget
from .methods import MULTITASK_MODULE_NAME, SHARED_MODULE_NAME, check_method_config, get_method
from .regularizers import build_regularizer

logger = logging.getLogger(__name__)


def attach_method(model, method_name: str, selector_options: dict | None = None) -> None:
    """Give `model` what the method needs before its first task: a selector, a regulariser, both
    as its `ConPetConfig` names them (a config that contradicts the method is refused)."""
    method = get_method(method_name)
    check_method_config(method_name, model.conpet_config)
    options = {**dict(method.selector_options), **model.conpet_config.selector_options, **(selector_options or {})}
    if method.selector and model.selector is None:
        if model.num_tasks:
            raise ValueError("Attach the selector before the first add_task")
        from .selectors import SELECTOR_CLASSES

        if method.selector not in SELECTOR_CLASSES:
            raise ValueError(f"Selector {method.selector!r} is not available in this installation")
        model.selector = SELECTOR_CLASSES[method.selector].for_model(model, **options)
    if model.regularizer is None:
        model.regularizer = build_regularizer(model.conpet_config)


def build_optimizer(model, args: TrainingArguments) -> torch.optim.Optimizer | None:
    """AdamW with the selector's own learning rate (`ConPetConfig.selector_learning_rate`), for
    `Trainer(..., optimizers=(build_optimizer(model, args), None))`; None when the Trainer's
    default optimizer already does (no such rate, or no selector parameter trains)."""
    rate = model.conpet_config.selector_learning_rate
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    selector = [p for name, p in trainable if name.startswith("selector.")]
    if rate is None or not selector:
        return None
    modules = [p for name, p in trainable if not name.startswith("selector.")]
    groups = [{"params": modules, "lr": args.learning_rate}, {"params": selector, "lr": rate}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=args.learning_rate, weight_decay=args.weight_decay,
        betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
    )


def training_settings(args: TrainingArguments) -> dict:
    """The optimiser settings a resumed run must share with the run it continues."""
    names = ("learning_rate", "weight_decay", "lr_scheduler_type", "warmup_steps", "gradient_accumulation_steps",
             "max_grad_norm", "adam_beta1", "adam_beta2", "adam_epsilon", "optim", "bf16", "fp16")
    plain = lambda value: getattr(value, "value", value)  # noqa: E731 - enums (scheduler, optim) as their string
    return {name: plain(getattr(args, name)) for name in names if hasattr(args, name)}


class ContinualTrainer:
    def __init__(
        self,
        model,
        stream,
        args: TrainingArguments,
        method: str = "conpet",
        *,
        batches_per_task: int | None = None,
        callbacks: list | None = None,
        resume: bool = True,
        **callback_options,
    ):
        self.model = model
        self.stream = stream
        self.args = args
        self.method = get_method(method)
        self.resume = resume
        attach_method(model, method)
        self.callback = ContinualCallback(
            model, stream, method, output_dir=args.output_dir, batch_size=args.per_device_train_batch_size,
            batches_per_task=batches_per_task, seed=args.seed, **callback_options,
        )
        self.callback.run_settings.update(training_settings(args))
        self.extra_callbacks = list(callbacks or [])

    @property
    def metrics(self):
        return self.callback.metrics

    def task_arguments(self, num_batches: int | None) -> TrainingArguments:
        """The user's arguments, with what a continual run needs fixed: a step budget per task,
        every column kept (task_ids), replay batches kept in order, no Trainer checkpoints."""
        changes = {
            "remove_unused_columns": False,
            "save_strategy": "no",
            "report_to": [],
            "train_sampling_strategy": "sequential" if self.method.train_data == "replay" else self.args.train_sampling_strategy,
        }
        if num_batches is not None:
            changes["max_steps"] = num_batches
        return dataclasses.replace(self.args, **changes)

    def _train(self, dataset, num_batches: int | None) -> None:
        args = self.task_arguments(num_batches)
        trainer = Trainer(
            model=self.model, args=args, train_dataset=dataset, data_collator=self.callback.data_collator,
            callbacks=[self.callback, *self.extra_callbacks], optimizers=(build_optimizer(self.model, args), None),
        )
        if self.args.disable_tqdm:  # quiet means quiet: no raw log dicts on stdout either
            trainer.remove_callback(PrinterCallback)
        self.on_task_start(num_batches)
        trainer.train()
        self.on_task_end()

    def on_task_start(self, num_batches: int | None) -> None:
        """Hook for front ends (the CLI announces the task); `self.callback.current_task` is set."""

    def on_task_end(self) -> None:
        """Hook for front ends; `self.callback.history[-1]` holds the task's scores."""

    def fit(self):
        """Train every task not finished yet; returns the run's `ContinualMetrics`."""
        finished = self.callback.resume() if self.resume else []
        if finished:
            logger.info("resuming after %d finished tasks: %s", len(finished), finished)
        self.callback.check_answers_fit([task for task in self.stream if task.name not in finished])
        budget = self.callback.batches_per_task
        if self.method.train_data == "all":
            if finished and list(finished) != list(self.stream.names):
                raise ResumeMismatchError(
                    f"this {self.method.name} run trained on {list(finished)} at once; a stream of "
                    f"{list(self.stream.names)} needs a new run (resuming would train nothing new)")
            if not finished:
                set_seed(self.args.seed)
                self.model.add_task(MULTITASK_MODULE_NAME, instruction="all tasks at once")
                self.callback.current_task = self.stream[len(self.stream) - 1]
                self._train(self.callback.train_dataset_all(), budget * len(self.stream) if budget else None)
            return self.metrics
        for task in self.stream:
            if task.name in finished:
                continue
            # A new module's initial weights draw from this seed alone, not from whatever the selector
            # drew before: methods that train the same modules (conpet, conpet_analytic, oracle) then do.
            set_seed(self.args.seed + task.index)
            if self.method.module_per_task:
                self.model.add_task(task.name, labels=task.labels, instruction=task.instruction,
                                    num_train=len(task.train), num_test=len(task.test), metric=task.metric,
                                    prompt_template=task.template,
                                    max_new_tokens=generation_budget(task, self.callback.tokenizer))
            elif self.model.num_tasks == 0:
                self.model.add_task(SHARED_MODULE_NAME, instruction="one module shared by every task")
            self._train(self.callback.train_dataset(task), budget)
        return self.metrics
