"""`TaskStream`: the tasks of a continual run, in order, and the collators for them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from datasets import Dataset, concatenate_datasets

from .collators import CausalLMGenerationCollator, CausalLMTrainingCollator, ClassificationCollator, Seq2SeqCollator
from .loading import tasks_from_dir, tasks_from_hub
from .tasks import Task


class TaskStream:
    """An ordered stream of tasks; ``stream[i]`` or ``stream["sst2"]``, iterable, sized.

    The union label space puts each task's labels after those of the tasks before it (the same
    label text in two tasks gets two slots), see :meth:`label_offset`.
    """

    def __init__(self, tasks: Sequence[Task], tokenizer: Any = None) -> None:
        tasks = list(tasks)
        if not tasks:
            raise ValueError("a TaskStream needs at least one task")
        names = [task.name for task in tasks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate task names in the stream: {duplicates}")
        for position, task in enumerate(tasks):
            if task.index != position:
                raise ValueError(
                    f"task {task.name!r} has index {task.index} but stands at position {position}"
                )
        self.tasks = tasks
        self.tokenizer = tokenizer
        self._by_name = {task.name: task for task in tasks}
        self._default_collator = None

    # -- container protocol

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, key: Union[int, str]) -> Task:
        if isinstance(key, str):
            if key not in self._by_name:
                raise KeyError(f"no task {key!r} in the stream; tasks: {self.names}")
            return self._by_name[key]
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"index a TaskStream by position or task name, not {type(key).__name__}")
        return self.tasks[int(key)]

    def __repr__(self) -> str:
        return f"TaskStream({self.names})"

    @property
    def names(self) -> list[str]:
        """Task names in stream order."""
        return [task.name for task in self.tasks]

    def _task(self, task: Union[int, str, Task]) -> Task:
        if isinstance(task, Task):
            if self._by_name.get(task.name) is not task:
                raise ValueError(f"task {task.name!r} is not part of this stream")
            return task
        return self[task]

    def labels_of(self, task: Union[int, str, Task]) -> list[str]:
        """The closed label set of a task (by position, name or Task); free-text tasks have none."""
        chosen = self._task(task)
        if chosen.labels is None:
            raise ValueError(f"task {chosen.name!r} is a free-text task: it has no label set")
        return list(chosen.labels)

    @property
    def free_text_tasks(self) -> list[str]:
        """Names of the tasks without a label set (which a classification head cannot learn)."""
        return [task.name for task in self.tasks if task.labels is None]

    def label_offset(self, task: Union[int, str, Task]) -> int:
        """Position of the task's first label in the union label space (global = offset + local)."""
        index = self._task(task).index
        return sum(len(earlier.labels or []) for earlier in self.tasks[:index])

    @property
    def num_labels(self) -> int:
        """Size of the union label space."""
        return sum(len(task.labels or []) for task in self.tasks)

    def concat(self, split: str = "test", tasks: Optional[Sequence[Union[int, str]]] = None) -> Dataset:
        """One dataset of a split over several tasks (default all), e.g. to score every seen task."""
        chosen = self.tasks if tasks is None else [self._task(task) for task in tasks]
        return concatenate_datasets([task.split(split) for task in chosen])

    # -- collators

    def collator(
        self,
        kind: Any = "causal_lm",
        mode: str = "train",
        *,
        max_length: Optional[int] = None,
        tokenizer: Any = None,
        **options: Any,
    ):
        """The collator for a model family and use.

        ``kind``: ``"causal_lm"``, ``"seq2seq"`` or ``"classification"``; ``mode``: ``"train"`` or
        ``"generate"`` (classification ignores it). ``tokenizer`` defaults to the stream's.
        ``options`` go to the collator class (e.g. ``label_space="global"`` for classification).

        Passing the bound method itself as a Trainer ``data_collator`` also works: called with a
        list of examples, it collates them for causal-LM training.
        """
        if isinstance(kind, list):
            if self._default_collator is None:
                self._default_collator = self.collator(
                    "causal_lm", "train", max_length=max_length, tokenizer=tokenizer
                )
            return self._default_collator(kind)
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError("no tokenizer: pass tokenizer= here or to TaskStream.from_dir")
        if mode not in ("train", "generate"):
            raise ValueError(f"unknown collator mode {mode!r}; expected 'train' or 'generate'")
        if kind == "causal_lm":
            cls = CausalLMTrainingCollator if mode == "train" else CausalLMGenerationCollator
            return cls(tokenizer, max_length=max_length, **options)
        if kind == "seq2seq":
            return Seq2SeqCollator(tokenizer, max_length=max_length, mode=mode, **options)
        if kind == "classification":
            return ClassificationCollator(tokenizer, self, max_length=max_length, **options)
        raise ValueError(
            f"unknown collator kind {kind!r}; expected 'causal_lm', 'seq2seq' or 'classification'"
        )

    # -- loaders

    @classmethod
    def from_dir(cls, path: Union[str, Path], order: Optional[Sequence[str]] = None, tokenizer: Any = None,
                 **options: Any) -> TaskStream:
        """Read ``<path>/<task>/{train.jsonl,test.jsonl,meta.json}``; ``order=None`` = sorted folders
        (options: :func:`loading.tasks_from_dir`)."""
        return cls(tasks_from_dir(path, order, **options), tokenizer=tokenizer)

    @classmethod
    def from_hub(cls, tasks: Mapping[str, Mapping[str, Any]], tokenizer: Any = None, **options: Any) -> TaskStream:
        """A stream from Hub (or local) datasets, in mapping order (options: :func:`loading.tasks_from_hub`)."""
        return cls(tasks_from_hub(tasks, **options), tokenizer=tokenizer)

