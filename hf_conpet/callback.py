"""`ContinualCallback`: what happens between tasks, for the stock `transformers.Trainer`.

One Trainer trains one task (its optimizer is built from the parameters that require grad at
train start, so the task is added first). The callback hands the Trainer that task's training
set (`train_dataset(task)`) and, when training ends: freezes the task, lets the selector learn
it, stores the task in replay memory, evaluates every task seen so far (one row of the accuracy
matrix), and writes a resumable checkpoint (`checkpoint.py`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from . import checkpoint
from ._io import read_json
from .data import NON_MODEL_KEYS, check_answers_fit
from .evaluation import AnswerCache, evaluate_task
from .features import FeatureSpec
from .methods import check_method_config, get_method
from .metrics import ContinualMetrics
from .names import CHECKPOINT_DIR
from .memory import DEFAULT_MEMORY_BUDGET, ReplayMemory
from .replay import build_replay_dataset
from .rng_state import generators_untouched
from .selectors import TaskEndContext

logger = logging.getLogger(__name__)

PROGRESS_FILE = checkpoint.PROGRESS_FILE
COLLATOR_KIND = {"causal_lm": "causal_lm", "seq2seq_lm": "seq2seq", "sequence_classification": "classification"}


class ContinualTrainingCollator:
    """Collates a training batch the way the method needs it: with `shared_module`, every row
    trains the one shared module (index 0), whatever its task."""

    def __init__(self, inner, shared_module: bool = False):
        self.inner = inner
        self.shared_module = shared_module

    def __call__(self, examples):
        batch = self.inner(examples)
        if self.shared_module:
            batch["task_ids"] = torch.zeros_like(batch["task_ids"])
        return batch


class ContinualCallback(TrainerCallback):
    """Between-task work of a continual run; also holds the run's memory and metrics."""

    def __init__(
        self,
        model,
        stream,
        method: str = "conpet",
        *,
        tokenizer=None,
        output_dir: str | None = None,
        batch_size: int = 8,
        batches_per_task: int | None = None,
        replay_ratio: float | None = None,
        memory: ReplayMemory | None = None,
        memory_budget: int | None = DEFAULT_MEMORY_BUDGET,
        max_length: int | None = 256,
        eval_batch_size: int = 16,
        max_eval_examples: int | None = None,
        single_task_scores: dict[str, float] | None = None,
        selector_steps: int = 600,
        selector_batch_size: int = 32,
        seed: int = 0,
    ):
        self.model = model
        self.stream = stream
        self.method = get_method(method)
        config = model.conpet_config
        check_method_config(method, config)
        if config.regularizer != "none" and model.regularizer is None:
            raise ValueError(f"method {method!r} trains with the {config.regularizer} regulariser, which the model has "
                             f"not got: call hf_conpet.attach_method(model, {method!r}) first")
        self.tokenizer = tokenizer if tokenizer is not None else (stream.tokenizer or model.tokenizer)
        if self.tokenizer is None:
            raise ValueError("ContinualCallback needs a tokenizer (pass tokenizer=, or give one to the stream)")
        self.output_dir = Path(output_dir) if output_dir else None
        self.batch_size = batch_size
        self.batches_per_task = batches_per_task or model.conpet_config.batches_per_task
        self.replay_ratio = replay_ratio if replay_ratio is not None else model.conpet_config.replay_ratio
        self.memory = memory if memory is not None else ReplayMemory(
            config.memory, capacity=config.memory_capacity, seed=seed, budget=memory_budget)
        self.max_length = max_length
        self._answers_checked: set[str] = set()  # tasks whose answers all fit in max_length
        self.eval_batch_size = eval_batch_size
        self.max_eval_examples = max_eval_examples
        self.selector_steps, self.selector_batch_size = selector_steps, selector_batch_size
        self.seed = seed
        self.kind = COLLATOR_KIND[model.task_type]
        self.metrics = ContinualMetrics(
            task_names=list(stream.names),
            single_task_scores=[single_task_scores.get(n) for n in stream.names] if single_task_scores else None,
            task_metrics=[task.metric for task in stream],
        )
        self.finished: list[str] = []
        self.current_task = None
        self.history: list[dict[str, Any]] = []
        # Frozen per-task modules answer an example the same way in every row of the matrix.
        self.answer_cache = AnswerCache() if self.method.module_per_task else None
        # What must not change between a run and its resume (a front end adds its own: learning rate, ...).
        self.run_settings: dict[str, Any] = {
            "batch_size": batch_size, "batches_per_task": self.batches_per_task, "replay_ratio": self.replay_ratio,
            "max_length": max_length, "max_eval_examples": max_eval_examples, "selector_steps": selector_steps,
            "selector_batch_size": selector_batch_size, "seed": seed, "memory_strategy": self.memory.strategy,
            "memory_capacity": self.memory.capacity, "memory_budget": self.memory.budget,
        }

    # ----- what the Trainer trains on ---------------------------------------------------------
    @property
    def data_collator(self):
        options = {"label_space": "global"} if self.kind == "classification" else {}
        inner = self.stream.collator(self.kind, "train", max_length=self.max_length, tokenizer=self.tokenizer, **options)
        return ContinualTrainingCollator(inner, shared_module=not self.method.module_per_task)

    def check_answers_fit(self, tasks) -> None:
        """Refuse, naming the task and example, a training answer that alone takes more than
        `max_length` tokens: up front, not at whichever batch of a long run happens to hold it.
        Each task is checked once (ContinualTrainer checks the stream before its first task, then
        `train_dataset` would again)."""
        unchecked = [task for task in tasks if task.name not in self._answers_checked]
        check_answers_fit(self.data_collator.inner, unchecked)
        self._answers_checked.update(task.name for task in unchecked)

    def train_dataset(self, task) -> datasets.Dataset:
        """The rows the Trainer should see for `task` (and mark it as the task in progress)."""
        self.check_answers_fit([task])
        self.current_task = task
        rows = task.train
        if self.method.train_data == "replay":
            batches = self.batches_per_task or math.ceil(len(rows) / self.batch_size)
            return build_replay_dataset(
                rows, self.memory if len(self.memory.tasks) else None, batch_size=self.batch_size,
                batches_per_task=batches, ratio=self.replay_ratio, seed=self.seed + task.index, new_task_index=task.index,
            )
        return rows

    def train_dataset_all(self) -> datasets.Dataset:
        """Every task's rows at once (multitask)."""
        self.check_answers_fit(self.stream)
        return datasets.concatenate_datasets([task.train for task in self.stream]).shuffle(seed=self.seed)

    # ----- Trainer events ---------------------------------------------------------------------
    def on_train_end(self, args, state, control, **kwargs):
        if self.current_task is None:
            raise RuntimeError("ContinualCallback: training ended but no task was started (call train_dataset(task) first)")
        # The between-task work draws what its caches make it draw (a resumed process has none), so
        # it must not move the generators the next task's init and dropout draw from (rng_state.py).
        with generators_untouched() as generators:
            if self.method.train_data == "all":
                self.finish_all_tasks()
            else:
                self.finish_task(self.current_task)
            self.save_checkpoint(generators)
        return control

    def finish_task(self, task) -> dict[str, Any]:
        """Freeze, update selector and memory, evaluate all seen tasks (then `save_checkpoint`)."""
        model = self.model
        if self.method.module_per_task:
            model.freeze_tasks()
        record: dict[str, Any] = {"task": task.name}
        if model.selector is not None:
            context = TaskEndContext(
                task_index=task.index, train=task.train, validation=task.validation, memory=self.memory,
                features=self.selector_features, batch_size=self.selector_batch_size, steps=self.selector_steps,
                replay_ratio=self.replay_ratio, seed=self.seed + task.index,
            )
            record["selector"] = model.selector.end_task(context)
        if task.index not in self.memory:
            embeddings = self.memory_embeddings(task.train) if self.memory.strategy == "kmeans" else None
            self.memory.add_task(task.index, task.train, embeddings=embeddings)
        if model.regularizer is not None:
            model.regularizer.end_task(model, self.training_batches(task.train))
        seen = [t for t in self.stream if t.index <= task.index]
        if self.max_eval_examples != 0:  # 0: no evaluation (cost benchmarks)
            record.update(self._evaluate_row(seen))
        self.finished.append(task.name)
        self.current_task = None
        self.history.append(record)
        return record

    def finish_all_tasks(self) -> dict[str, Any]:
        """Multitask saw every task at once: one evaluation, repeated as every row of the matrix."""
        tasks = list(self.stream)
        scores = [evaluate_task(self.model, t, self._eval_collator(), self.tokenizer, routing=self.method.eval_routing,
                                batch_size=self.eval_batch_size, max_examples=self.max_eval_examples) for t in tasks]
        for row in range(len(tasks)):
            self.metrics.add_row([s.accuracy for s in scores[: row + 1]], examples_scored=[s.total for s in scores[: row + 1]])
        self.finished = [t.name for t in tasks]
        record = {"task": "all", "scores": {s.task: s.accuracy for s in scores}}
        self.history.append(record)
        self.current_task = None
        return record

    def _evaluate_row(self, seen) -> dict[str, Any]:
        routing = self.method.eval_routing
        scores = [
            evaluate_task(self.model, t, self._eval_collator(), self.tokenizer, routing=routing,
                          batch_size=self.eval_batch_size, max_examples=self.max_eval_examples,
                          answer_cache=self.answer_cache)
            for t in seen
        ]
        counts = [(s.selector_correct, s.total) for s in scores] if routing == "selector" else None
        self.metrics.add_row([s.accuracy for s in scores], selector_counts=counts, examples_scored=[s.total for s in scores])
        summary = self.metrics.summary()
        logger.info("after %s: %s | %s", seen[-1].name, {s.task: round(s.accuracy, 3) for s in scores}, summary)
        return {"scores": {s.task: s.accuracy for s in scores}, "summary": summary}

    def _eval_collator(self):
        options = {"label_space": "global"} if self.kind == "classification" else {}
        return self.stream.collator(self.kind, "generate", max_length=self.max_length, tokenizer=self.tokenizer, **options)

    def selector_features(self, rows: datasets.Dataset) -> torch.Tensor:
        """[len(rows), d] features of the rows' prompts, as the model's selector reads them."""
        features = [self.model.selector_features(b["input_ids"], b["attention_mask"]) for b in self.encode_prompts(rows)]
        if not features:
            size = self.model.feature_size(self.model.selector.feature_spec)
            return torch.zeros(0, size, device=self.model._device)
        return torch.cat(features)

    def memory_embeddings(self, rows: datasets.Dataset) -> torch.Tensor:
        """[len(rows), d] frozen-backbone features the kmeans memory clusters: what the model's
        selector reads, or (no selector) mean-pooled input embeddings, which cost no forward pass."""
        spec = getattr(self.model.selector, "feature_spec", None) or FeatureSpec()
        features = [self.model.prompt_features(b["input_ids"], b["attention_mask"], spec) for b in self.encode_prompts(rows)]
        return torch.cat(features) if features else torch.zeros(0, self.model.feature_size(spec))

    def training_batches(self, rows: datasets.Dataset):
        """The rows as the Trainer's batches, in order, on the model's device (what EWC's Fisher reads)."""
        device = self.model._device
        for batch in DataLoader(rows, batch_size=self.batch_size, shuffle=False, collate_fn=self.data_collator):
            yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def encode_prompts(self, rows: datasets.Dataset):
        """Prompt-only batches of `rows` on the model's device (what selectors read)."""
        collate = self.stream.collator(
            "causal_lm" if self.kind == "causal_lm" else self.kind, "generate",
            max_length=self.max_length, tokenizer=self.tokenizer, **({"label_space": "global"} if self.kind == "classification" else {}),
        )
        device = self.model._device
        for batch in DataLoader(rows, batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate):
            for key in (*NON_MODEL_KEYS, "labels", "label_ids"):
                batch.pop(key, None)
            yield {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}

    # ----- checkpoint / resume ----------------------------------------------------------------
    def save_checkpoint(self, generators: tuple[dict, dict] | None = None) -> Path | None:
        """`<output_dir>/checkpoint/`: system, replay memory, metrics, progress, and the generator
        states the next task starts from (`generators`; default: the current ones)."""
        if self.output_dir is None:
            return None
        progress = {
            "method": self.method.name, "stream": list(self.stream.names), "finished": self.finished,
            "seed": self.seed, "settings": self.run_settings, "history": self.history,
        }
        return checkpoint.write_checkpoint(self.output_dir / CHECKPOINT_DIR, self.model, self.memory,
                                           self.metrics.to_dict(), progress, generators, self.model.regularizer)

    def resume(self) -> list[str]:
        """Load the last checkpoint into the (task-less) model and put the global generators where
        the run left them; returns the tasks already finished (in a user's own loop: skip them)."""
        if self.output_dir is None:
            return []
        directory = self.output_dir / CHECKPOINT_DIR
        progress = checkpoint.read_progress(directory)
        if progress is None:
            return []
        finished = progress["finished"]
        if progress["method"] != self.method.name:
            raise checkpoint.ResumeMismatchError(
                f"{directory} is a {progress['method']!r} run; cannot resume it as {self.method.name!r}")
        if list(self.stream.names)[: len(finished)] != finished:
            raise checkpoint.ResumeMismatchError(
                f"{directory} finished tasks {finished}; this stream {list(self.stream.names)} does not start with them")
        differences = checkpoint.settings_differences(progress.get("settings", {}), self.run_settings)
        if differences:
            raise checkpoint.ResumeMismatchError(
                f"cannot resume {directory} with other settings than it was run with: " + "; ".join(differences))
        self.model.load_system(directory, strict_base_model_id=False)
        if not self.method.module_per_task and self.model.num_tasks:
            self.model.thaw_last_task()
        self.memory = ReplayMemory.load(directory / checkpoint.REPLAY_DIR)
        if self.model.regularizer is not None:
            self.model.regularizer = checkpoint.read_regularizer(directory, self.model.regularizer)
        metrics_path = directory / checkpoint.METRICS_FILE
        try:
            saved = ContinualMetrics.from_dict(read_json(metrics_path))
        except (TypeError, AttributeError, KeyError, ValueError) as error:
            raise ValueError(f"{metrics_path}: {error}") from None
        self.metrics = ContinualMetrics(  # this stream may extend the saved one
            task_names=list(self.stream.names), matrix=saved.matrix, selector_counts=saved.selector_counts,
            single_task_scores=self.metrics.single_task_scores, examples_scored=saved.examples_scored,
            task_metrics=self.metrics.task_metrics,
        )
        self.finished = list(finished)
        self.history = list(progress.get("history", []))
        checkpoint.restore_generators(directory)
        logger.info("resumed %s after %s", directory, self.finished)
        return self.finished

