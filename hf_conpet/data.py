"""Task streams: tasks as `datasets.Dataset`, prompt formatting, label sets, collators.

A task is a closed-label-set problem cast as text generation (the Long Sequence benchmark).
Each example carries its ``task_id`` so that training can teach the selector and evaluation can
score routing, while the model itself is never told the task at inference.

On-disk layout read by :meth:`TaskStream.from_dir` (that of ``shared/data/long_sequence``)::

    <root>/<task>/train.jsonl   {"id", "input", "output"} per line
    <root>/<task>/test.jsonl    same schema
    <root>/<task>/meta.json     {"labels": [...], "instruction": "...", ...}

The released data has dev == test, so the validation split is carved from train (fixed seed).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from datasets import Dataset, Features, Value, concatenate_datasets

from .names import validate_task_name
from .metrics import normalize_answer

__all__ = [
    "COLUMNS",
    "DEFAULT_TEMPLATE",
    "NON_MODEL_KEYS",
    "CausalLMGenerationCollator",
    "CausalLMTrainingCollator",
    "ClassificationCollator",
    "Seq2SeqCollator",
    "Task",
    "TaskStream",
    "validate_task_name",
]

DEFAULT_TEMPLATE = "{instruction}\n{input}\nOutput: "
SPLITS = ("train", "validation", "test")

#: Columns of every split. ``label_id`` is the task-local index of ``output`` in ``Task.labels``.
COLUMNS = Features(
    {
        "id": Value("string"),
        "input": Value("string"),
        "output": Value("string"),
        "prompt": Value("string"),
        "task_id": Value("int64"),
        "label_id": Value("int64"),
    }
)

#: Batch keys the collators add for scoring / bookkeeping; pop them before ``model(**batch)``.
NON_MODEL_KEYS = ("references", "example_ids")

IGNORE_INDEX = -100


def _check_labels(labels: Any, where: str) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
        raise ValueError(f"{where}: 'labels' must be a non-empty list of strings, got {labels!r}")
    labels = list(labels)
    if any(not isinstance(label, str) or not label.strip() for label in labels):
        raise ValueError(f"{where}: every label must be a non-empty string, got {labels!r}")
    seen: dict[str, str] = {}
    for label in labels:
        key = normalize_answer(label)
        if key in seen:
            raise ValueError(
                f"{where}: labels {seen[key]!r} and {label!r} are the same answer under exact-match "
                f"normalisation, so they could never be told apart"
            )
        seen[key] = label
    return labels


# --------------------------------------------------------------------------- Task


@dataclass
class Task:
    """One task of a stream: its closed label set, instruction and three splits.

    Every split has the :data:`COLUMNS` (``id, input, output, prompt, task_id, label_id``), with
    ``task_id == index``. Build from raw records with :meth:`from_records`.
    """

    name: str
    index: int
    labels: list[str]
    instruction: str
    train: Dataset
    validation: Dataset
    test: Dataset
    metric: str = "exact_match"

    def __post_init__(self) -> None:
        validate_task_name(self.name)
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"task {self.name!r}: index must be a non-negative int, got {self.index!r}")
        self.labels = _check_labels(self.labels, f"task {self.name!r}")
        for split in SPLITS:
            dataset = getattr(self, split)
            if not isinstance(dataset, Dataset):
                raise TypeError(
                    f"task {self.name!r}: {split} must be a datasets.Dataset, got {type(dataset).__name__}"
                )
            missing = [
                column
                for column in ("id", "input", "output", "prompt", "task_id")
                if column not in dataset.column_names
            ]
            if missing:
                raise ValueError(f"task {self.name!r}: the {split} split lacks columns {missing}")

    def split(self, name: str) -> Dataset:
        """The split called ``name`` (train, validation or test)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def format_prompt(self, text: str, template: str = DEFAULT_TEMPLATE) -> str:
        """The prompt for a new input of this task (what ``prompt`` holds for stored examples)."""
        return _format_prompt(template, self.instruction, self.labels, self.name, text)

    @classmethod
    def from_records(
        cls,
        name: str,
        index: int,
        labels: Sequence[str],
        instruction: str,
        train: Sequence[Mapping[str, Any]],
        test: Sequence[Mapping[str, Any]],
        validation: Optional[Sequence[Mapping[str, Any]]] = None,
        *,
        validation_size: Union[float, int] = 0.1,
        seed: int = 0,
        max_train: Optional[int] = None,
        max_test: Optional[int] = None,
        template: str = DEFAULT_TEMPLATE,
        metric: str = "exact_match",
        source: Optional[Mapping[str, str]] = None,
    ) -> Task:
        """Build a task from ``{"id"?, "input", "output"}`` records (what both loaders produce).

        Without ``validation``, it is carved from ``train``: ``validation_size`` is a fraction of
        the training pool (the train records, capped by ``max_train``) or an absolute count; the
        draw uses ``seed``. ``max_train`` then caps the remaining train examples (a seeded random
        subset), ``max_test`` keeps the first test examples. ``source`` names where each split came
        from (for error messages).
        """
        validate_task_name(name)
        where = dict(source or {})
        labels = _check_labels(labels, f"task {name!r}")
        if not isinstance(instruction, str):
            raise ValueError(f"task {name!r}: 'instruction' must be a string, got {instruction!r}")
        try:
            _format_prompt(template, instruction, labels, name, "")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"prompt template {template!r} is invalid ({error!r}); it may use {{instruction}}, "
                f"{{input}}, {{labels}} and {{task}}"
            ) from None
        for limit_name, limit in (("max_train", max_train), ("max_test", max_test)):
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                raise ValueError(f"{limit_name} must be a positive int or None, got {limit!r}")

        train_rows = _check_records(train, name, "train", where.get("train", "train"), labels)
        test_rows = _check_records(test, name, "test", where.get("test", "test"), labels)
        if max_test is not None:
            test_rows = test_rows[:max_test]
        for split, rows in (("train", train_rows), ("test", test_rows)):
            if not rows:
                raise ValueError(f"task {name!r}: the {split} split is empty ({where.get(split, split)})")

        if validation is not None:
            validation_rows = _check_records(
                validation, name, "validation", where.get("validation", "validation"), labels
            )
            order = np.random.default_rng(seed).permutation(len(train_rows))
            train_indices = order if max_train is None else order[:max_train]
        else:
            pool = len(train_rows) if max_train is None else min(len(train_rows), max_train)
            n_validation = _validation_count(validation_size, pool, name)
            if n_validation >= len(train_rows):
                raise ValueError(
                    f"task {name!r}: validation_size={validation_size!r} takes {n_validation} of the "
                    f"{len(train_rows)} training examples in {where.get('train', 'train')}, "
                    f"leaving none to train on"
                )
            order = np.random.default_rng(seed).permutation(len(train_rows))
            validation_rows = [train_rows[k] for k in sorted(order[:n_validation])]
            rest = order[n_validation:]
            train_indices = rest if max_train is None else rest[:max_train]
        train_rows = [train_rows[k] for k in sorted(train_indices)]

        splits = {}
        for split, rows in (("train", train_rows), ("validation", validation_rows), ("test", test_rows)):
            splits[split] = _to_dataset(rows, name, index, labels, instruction, template)
        return cls(name=name, index=index, labels=labels, instruction=instruction, metric=metric, **splits)


def _format_prompt(template: str, instruction: str, labels: Sequence[str], task: str, text: str) -> str:
    return template.format(instruction=instruction, input=text, labels=", ".join(labels), task=task)


def _validation_count(size: Union[float, int], pool: int, task: str) -> int:
    """A fraction in [0, 1) of the pool (at least one example when > 0) or an absolute count."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ValueError(f"validation_size must be a fraction in [0, 1) or a count, got {size!r}")
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"validation_size {size!r} as a fraction must lie in [0, 1) (task {task!r})")
        return 0 if size == 0.0 else max(1, round(size * pool))
    if size < 0:
        raise ValueError(f"validation_size {size!r} as a count must be >= 0 (task {task!r})")
    return size


def _check_records(
    records: Sequence[Mapping[str, Any]], task: str, split: str, where: str, labels: Sequence[str]
) -> list[dict[str, str]]:
    """Validate ``{"id"?, "input", "output"}`` records; a missing id becomes ``<task>-<split>-<n>``."""
    allowed = set(labels)
    rows = []
    for number, record in enumerate(records):
        position = f"{where}, example {number}"
        if not isinstance(record, Mapping):
            raise ValueError(f"task {task!r}: {position} is not a JSON object: {record!r}")
        for key in ("input", "output"):
            if not isinstance(record.get(key), str):
                raise ValueError(f"task {task!r}: {position} needs a string {key!r}, got {record.get(key)!r}")
        if record["output"] not in allowed:
            raise ValueError(
                f"task {task!r}: {position} has output {record['output']!r}, which is not one of the "
                f"task's labels {list(labels)}"
            )
        example_id = record.get("id", f"{task}-{split}-{number}")
        rows.append({"id": str(example_id), "input": record["input"], "output": record["output"]})
    return rows


def _to_dataset(rows, name, index, labels, instruction, template) -> Dataset:
    label_index = {label: position for position, label in enumerate(labels)}
    columns = {
        "id": [row["id"] for row in rows],
        "input": [row["input"] for row in rows],
        "output": [row["output"] for row in rows],
        "prompt": [_format_prompt(template, instruction, labels, name, row["input"]) for row in rows],
        "task_id": [index] * len(rows),
        "label_id": [label_index[row["output"]] for row in rows],
    }
    return Dataset.from_dict(columns, features=COLUMNS)


# --------------------------------------------------------------------------- reading files


def _read_jsonl(path: Path, task: str) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"task {task!r}: missing file {path}")
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"task {task!r}: malformed JSON in {path} line {line_number}: {error.msg}"
                ) from None
    return records


def _read_meta(path: Path, task: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"task {task!r}: missing file {path}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"task {task!r}: malformed JSON in {path} line {error.lineno}: {error.msg}"
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(f"task {task!r}: {path} must hold a JSON object")
    if "labels" not in meta:
        raise ValueError(f"task {task!r}: {path} lacks 'labels' (the closed label set)")
    return meta


# --------------------------------------------------------------------------- TaskStream


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
        """The closed label set of a task (by position, name or Task)."""
        return list(self._task(task).labels)

    def label_offset(self, task: Union[int, str, Task]) -> int:
        """Position of the task's first label in the union label space (global = offset + local)."""
        index = self._task(task).index
        return sum(len(earlier.labels) for earlier in self.tasks[:index])

    @property
    def num_labels(self) -> int:
        """Size of the union label space."""
        return sum(len(task.labels) for task in self.tasks)

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
    def from_dir(
        cls,
        path: Union[str, Path],
        order: Optional[Sequence[str]] = None,
        tokenizer: Any = None,
        validation_size: Union[float, int] = 0.1,
        seed: int = 0,
        max_train: Optional[int] = None,
        max_test: Optional[int] = None,
        template: str = DEFAULT_TEMPLATE,
    ) -> TaskStream:
        """Read ``<path>/<task>/{train.jsonl,test.jsonl,meta.json}``; ``order=None`` = sorted folders.

        The task name is the folder name (``meta.json``'s ``task`` field is informative only).
        See :meth:`Task.from_records` for the split options.
        """
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"task directory {root} does not exist")
        if order is None:
            names = sorted(
                entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
            )
            if not names:
                raise FileNotFoundError(f"no task folders in {root}")
        else:
            if isinstance(order, str):
                raise ValueError(f"order must be a list of task names, not the string {order!r}")
            names = list(order)
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"duplicate task names in order: {duplicates}")
            if not names:
                raise ValueError("order is empty: name at least one task")
            for name in names:
                if not (isinstance(name, str) and (root / name).is_dir()):
                    available = sorted(
                        entry.name
                        for entry in root.iterdir()
                        if entry.is_dir() and not entry.name.startswith(".")
                    )
                    raise ValueError(
                        f"unknown task {name!r} in order: no folder {root / str(name)}; "
                        f"available: {available}"
                    )
        tasks = []
        for index, name in enumerate(names):
            validate_task_name(name)
            folder = root / name
            meta = _read_meta(folder / "meta.json", name)
            train = _read_jsonl(folder / "train.jsonl", name)
            test = _read_jsonl(folder / "test.jsonl", name)
            tasks.append(
                Task.from_records(
                    name,
                    index,
                    _check_labels(meta["labels"], f"task {name!r} ({folder / 'meta.json'})"),
                    meta.get("instruction", ""),
                    train,
                    test,
                    validation_size=validation_size,
                    seed=seed,
                    max_train=max_train,
                    max_test=max_test,
                    template=template,
                    metric=meta.get("metric", "exact_match"),
                    source={"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")},
                )
            )
        return cls(tasks, tokenizer=tokenizer)

    @classmethod
    def from_hub(
        cls,
        tasks: Mapping[str, Mapping[str, Any]],
        tokenizer: Any = None,
        validation_size: Union[float, int] = 0.1,
        seed: int = 0,
        max_train: Optional[int] = None,
        max_test: Optional[int] = None,
        template: str = DEFAULT_TEMPLATE,
    ) -> TaskStream:
        """Build a stream from Hub datasets, in mapping order (needs network; untested offline).

        ``tasks`` maps a task name to ``load_dataset`` arguments plus the fields we need, e.g.
        ``{"sst2": {"path": "stanfordnlp/sst2", "input_column": "sentence", "output_column":
        "label", "instruction": "...", "labels": ["Bad", "Good"]}}``. ``output_column`` may hold
        label strings or ``ClassLabel`` ints (mapped through ``labels``, default the ClassLabel
        names). Optional: ``name``, ``train_split`` ("train"), ``test_split`` ("test"),
        ``validation_split`` (default: carve from train).
        """
        from datasets import ClassLabel, load_dataset

        built = []
        for index, (name, spec) in enumerate(tasks.items()):
            spec = dict(spec)
            input_column = spec.pop("input_column", "input")
            output_column = spec.pop("output_column", "output")
            instruction = spec.pop("instruction", "")
            labels = spec.pop("labels", None)
            split_names = {
                "train": spec.pop("train_split", "train"),
                "test": spec.pop("test_split", "test"),
                "validation": spec.pop("validation_split", None),
            }
            loaded = load_dataset(**spec)
            records = {}
            for split, split_name in split_names.items():
                if split_name is None:
                    continue
                dataset = loaded[split_name]
                feature = dataset.features[output_column]
                if isinstance(feature, ClassLabel):
                    labels = labels if labels is not None else list(feature.names)
                    values = list(dataset[output_column])
                    if any(not 0 <= value < len(labels) for value in values):
                        raise ValueError(
                            f"task {name!r}: split {split_name!r} of {spec.get('path')!r} has unlabelled or "
                            f"out-of-range classes (e.g. -1, as in GLUE test sets); pick a labelled split"
                        )
                    outputs = [labels[value] for value in values]
                else:
                    outputs = list(dataset[output_column])
                ids = (
                    dataset["id"]
                    if "id" in dataset.column_names
                    else [f"{name}-{split}-{k}" for k in range(len(dataset))]
                )
                records[split] = [
                    {"id": str(example_id), "input": text, "output": output}
                    for example_id, text, output in zip(ids, dataset[input_column], outputs)
                ]
            if labels is None:
                raise ValueError(f"task {name!r}: give 'labels' (the output column is not a ClassLabel)")
            built.append(
                Task.from_records(
                    name,
                    index,
                    labels,
                    instruction,
                    records["train"],
                    records["test"],
                    records.get("validation"),
                    validation_size=validation_size,
                    seed=seed,
                    max_train=max_train,
                    max_test=max_test,
                    template=template,
                    source={
                        split: f"{spec.get('path')}[{split_name}]"
                        for split, split_name in split_names.items()
                    },
                )
            )
        return cls(built, tokenizer=tokenizer)


# --------------------------------------------------------------------------- collators


def _pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id (without mutating the tokenizer)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        warnings.warn(
            "the tokenizer has no pad token; padding with its eos token (padding is masked out "
            "by attention_mask and labels, so this is safe)",
            stacklevel=3,
        )
        return tokenizer.eos_token_id
    raise ValueError("the tokenizer has neither a pad token nor an eos token: set tokenizer.pad_token first")


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "the tokenizer has no eos token: targets end with eos so that generation knows when to "
            "stop; set tokenizer.eos_token first"
        )
    return tokenizer.eos_token_id


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer adds before and after a text (e.g. BOS; CLS ... SEP; ... EOS).

    Found by encoding a probe with and without special tokens, so left-truncation can keep them.
    """
    probe = "a b c"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    return [], []


def _field(example: Mapping[str, Any], key: str) -> Any:
    try:
        return example[key]
    except KeyError:
        hint = ""
        if key in ("prompt", "output", "task_id", "input"):
            hint = (
                "; with transformers.Trainer set TrainingArguments(remove_unused_columns=False) so "
                "the dataset's text columns reach the collator"
            )
        raise KeyError(f"example has no {key!r} field (fields: {sorted(example)}){hint}") from None


def _task_ids(examples: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    return torch.tensor([int(_field(example, "task_id")) for example in examples], dtype=torch.long)


def _check_examples(examples: Any) -> Sequence[Mapping[str, Any]]:
    if isinstance(examples, Mapping) or not isinstance(examples, Sequence):
        raise TypeError("a collator takes a list of examples (dicts)")
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    return examples


def _pad(
    sequences: Sequence[Sequence[int]], value: int, side: str, multiple_of: Optional[int]
) -> torch.Tensor:
    width = max(len(sequence) for sequence in sequences)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    padded = []
    for sequence in sequences:
        filler = [value] * (width - len(sequence))
        padded.append(list(sequence) + filler if side == "right" else filler + list(sequence))
    return torch.tensor(padded, dtype=torch.long)


class _PromptEncoder:
    """Shared prompt handling: batch tokenisation, special tokens kept, LEFT truncation.

    Left truncation drops the oldest text and keeps the end of the prompt ("Output: "), which is
    where the answer must follow.
    """

    def __init__(
        self, tokenizer: Any, max_length: Optional[int], keep_suffix: bool, pad_to_multiple_of: Optional[int]
    ):
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2
        ):
            raise ValueError(f"max_length must be an int >= 2 or None, got {max_length!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_id = _pad_id(tokenizer)
        prefix, suffix = _special_affixes(tokenizer)
        self.prefix = prefix
        self.suffix = suffix if keep_suffix else []

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return list(self.tokenizer(list(texts), add_special_tokens=False)["input_ids"])

    def encode_prompts(
        self, texts: Sequence[str], budgets: Optional[Sequence[Optional[int]]] = None
    ) -> list[list[int]]:
        """Prompt ids with special tokens; ``budgets[k]`` caps example k's length (None = max_length)."""
        encoded = []
        for position, body in enumerate(self.tokenize(texts)):
            budget = self.max_length if budgets is None or budgets[position] is None else budgets[position]
            if budget is not None:
                room = max(budget - len(self.prefix) - len(self.suffix), 0)
                body = body[-room:] if room else []
            encoded.append(self.prefix + body + self.suffix)
        return encoded


class CausalLMTrainingCollator:
    """Decoder-only training: ``prompt + output + eos``, loss only on ``output + eos``.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (-100 on prompt and padding) and
    ``task_ids``; right padding. Over ``max_length``, the prompt loses tokens from its left; the
    target is never cut (a target alone longer than ``max_length`` is an error).
    Prompt and target are tokenised separately, as generation will see them.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: Optional[int] = None,
        prompt_field: str = "prompt",
        target_field: str = "output",
        pad_to_multiple_of: Optional[int] = None,
    ) -> None:
        self.prompts = _PromptEncoder(
            tokenizer, max_length, keep_suffix=False, pad_to_multiple_of=pad_to_multiple_of
        )
        self.eos_id = _eos_id(tokenizer)
        self.max_length = max_length
        self.prompt_field = prompt_field
        self.target_field = target_field

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        examples = _check_examples(examples)
        targets = [
            ids + [self.eos_id]
            for ids in self.prompts.tokenize([_field(e, self.target_field) for e in examples])
        ]
        budgets = None
        if self.max_length is not None:
            for example, target in zip(examples, targets):
                if len(target) > self.max_length - len(self.prompts.prefix):
                    raise ValueError(
                        f"example {example.get('id', '?')!r}: its target alone takes {len(target)} tokens, "
                        f"more than max_length={self.max_length} allows; raise max_length"
                    )
            budgets = [self.max_length - len(target) for target in targets]
        prompts = self.prompts.encode_prompts([_field(e, self.prompt_field) for e in examples], budgets)
        sequences = [prompt + target for prompt, target in zip(prompts, targets)]
        label_rows = [[IGNORE_INDEX] * len(prompt) + target for prompt, target in zip(prompts, targets)]
        multiple = self.prompts.pad_to_multiple_of
        return {
            "input_ids": _pad(sequences, self.prompts.pad_id, "right", multiple),
            "attention_mask": _pad([[1] * len(s) for s in sequences], 0, "right", multiple),
            "labels": _pad(label_rows, IGNORE_INDEX, "right", multiple),
            "task_ids": _task_ids(examples),
        }


class CausalLMGenerationCollator:
    """Decoder-only generation: the prompt only, LEFT padded so every row ends where decoding starts.

    Returns ``input_ids``, ``attention_mask``, ``task_ids`` and, for scoring, ``references`` (the
    gold ``output`` strings) and ``example_ids`` — pop those (:data:`NON_MODEL_KEYS`) before
    calling the model.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: Optional[int] = None,
        prompt_field: str = "prompt",
        target_field: str = "output",
        pad_to_multiple_of: Optional[int] = None,
    ) -> None:
        self.prompts = _PromptEncoder(
            tokenizer, max_length, keep_suffix=False, pad_to_multiple_of=pad_to_multiple_of
        )
        self.prompt_field = prompt_field
        self.target_field = target_field

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        examples = _check_examples(examples)
        prompts = self.prompts.encode_prompts([_field(e, self.prompt_field) for e in examples])
        multiple = self.prompts.pad_to_multiple_of
        return {
            "input_ids": _pad(prompts, self.prompts.pad_id, "left", multiple),
            "attention_mask": _pad([[1] * len(p) for p in prompts], 0, "left", multiple),
            "task_ids": _task_ids(examples),
            "references": [example.get(self.target_field) for example in examples],
            "example_ids": [example.get("id") for example in examples],
        }


class Seq2SeqCollator:
    """Encoder-decoder: ``input_ids`` from the prompt, ``labels`` from ``output + eos`` (pad -> -100).

    ``mode="generate"`` leaves out ``labels`` and carries ``references`` / ``example_ids`` like
    the causal generation collator. The encoder input keeps the tokenizer's special tokens and is
    truncated from the left to ``max_length``; targets to ``max_target_length`` (eos kept).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: Optional[int] = None,
        max_target_length: Optional[int] = None,
        mode: str = "train",
        prompt_field: str = "prompt",
        target_field: str = "output",
        pad_to_multiple_of: Optional[int] = None,
    ) -> None:
        if mode not in ("train", "generate"):
            raise ValueError(f"unknown mode {mode!r}; expected 'train' or 'generate'")
        self.prompts = _PromptEncoder(
            tokenizer, max_length, keep_suffix=True, pad_to_multiple_of=pad_to_multiple_of
        )
        self.eos_id = _eos_id(tokenizer)
        self.max_target_length = max_target_length
        self.mode = mode
        self.prompt_field = prompt_field
        self.target_field = target_field

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        examples = _check_examples(examples)
        prompts = self.prompts.encode_prompts([_field(e, self.prompt_field) for e in examples])
        multiple = self.prompts.pad_to_multiple_of
        batch: dict[str, Any] = {
            "input_ids": _pad(prompts, self.prompts.pad_id, "right", multiple),
            "attention_mask": _pad([[1] * len(p) for p in prompts], 0, "right", multiple),
            "task_ids": _task_ids(examples),
        }
        if self.mode == "generate":
            batch["references"] = [example.get(self.target_field) for example in examples]
            batch["example_ids"] = [example.get("id") for example in examples]
            return batch
        targets = []
        for ids in self.prompts.tokenize([_field(e, self.target_field) for e in examples]):
            if self.max_target_length is not None:
                ids = ids[: self.max_target_length - 1]
            targets.append(ids + [self.eos_id])
        batch["labels"] = _pad(targets, IGNORE_INDEX, "right", None)
        return batch


class ClassificationCollator:
    """Sequence classification: tokenised text (right-truncated) plus label indices.

    ``label_ids`` is always the task-local index into ``Task.labels``; ``labels`` is that index
    (``label_space="local"``, one head per task) or ``stream.label_offset(task) + local``
    (``label_space="global"``, one head over the union label space).
    """

    def __init__(
        self,
        tokenizer: Any,
        stream: TaskStream,
        max_length: Optional[int] = None,
        label_space: str = "local",
        text_field: str = "prompt",
        pad_to_multiple_of: Optional[int] = None,
    ) -> None:
        if label_space not in ("local", "global"):
            raise ValueError(f"label_space must be 'local' or 'global', got {label_space!r}")
        self.prompts = _PromptEncoder(
            tokenizer, max_length, keep_suffix=True, pad_to_multiple_of=pad_to_multiple_of
        )
        self.max_length = max_length
        self.label_space = label_space
        self.text_field = text_field
        self.label_index = [{label: k for k, label in enumerate(task.labels)} for task in stream]
        self.offsets = [stream.label_offset(task) for task in stream]

    def _local_label(self, example: Mapping[str, Any]) -> int:
        task_id = int(_field(example, "task_id"))
        if not 0 <= task_id < len(self.label_index):
            raise ValueError(f"example {example.get('id', '?')!r} has task_id {task_id}, outside the stream")
        if example.get("label_id") is not None:
            return int(example["label_id"])
        output = _field(example, "output")
        if output not in self.label_index[task_id]:
            raise ValueError(
                f"example {example.get('id', '?')!r}: output {output!r} is not a label of task {task_id} "
                f"({list(self.label_index[task_id])})"
            )
        return self.label_index[task_id][output]

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        examples = _check_examples(examples)
        bodies = self.prompts.tokenize([_field(e, self.text_field) for e in examples])
        encoded = []
        room = (
            None
            if self.max_length is None
            else max(self.max_length - len(self.prompts.prefix) - len(self.prompts.suffix), 0)
        )
        for body in bodies:
            encoded.append(
                self.prompts.prefix + (body if room is None else body[:room]) + self.prompts.suffix
            )
        task_ids = _task_ids(examples)
        local = torch.tensor([self._local_label(e) for e in examples], dtype=torch.long)
        offsets = torch.tensor([self.offsets[int(t)] for t in task_ids], dtype=torch.long)
        multiple = self.prompts.pad_to_multiple_of
        return {
            "input_ids": _pad(encoded, self.prompts.pad_id, "right", multiple),
            "attention_mask": _pad([[1] * len(ids) for ids in encoded], 0, "right", multiple),
            "labels": local if self.label_space == "local" else local + offsets,
            "label_ids": local,
            "task_ids": task_ids,
        }
