"""A task: its splits as `datasets.Dataset` with fixed columns, its label set (or free text), its
metric and its prompt format."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional, Union

import numpy as np
from datasets import Dataset, Features, List, Value

from ..names import validate_task_name
from ..scoring import check_metric, normalize_answer

DEFAULT_TEMPLATE = "{instruction}\n{input}\nOutput: "
#: Prompt templates a stream may name instead of spelling one out (``--template superni``).
TEMPLATES = {
    "default": DEFAULT_TEMPLATE,
    # SuperNI's zero-shot prompt, as SAPT trains and scores it
    "superni": "Definition: {instruction}\n\nNow complete the following example -\nInput: {input}\nOutput: ",
}
SPLITS = ("train", "validation", "test")

#: Columns of every split. ``label_id`` is the task-local index of ``output`` in ``Task.labels``
#: (-1 for a free-text task); ``references`` every acceptable answer (``output`` among them).
COLUMNS = Features(
    {
        "id": Value("string"),
        "input": Value("string"),
        "output": Value("string"),
        "prompt": Value("string"),
        "task_id": Value("int64"),
        "label_id": Value("int64"),
        "references": List(Value("string")),
    }
)
FREE_TEXT_LABEL_ID = -1

#: Batch keys the collators add for scoring / bookkeeping; pop them before ``model(**batch)``.
NON_MODEL_KEYS = ("references", "example_ids")

IGNORE_INDEX = -100


def resolve_template(template: str) -> str:
    """A template by its name in :data:`TEMPLATES`, or the format string itself."""
    if not isinstance(template, str) or not template:
        raise ValueError(f"a prompt template must be a non-empty string, got {template!r}")
    return TEMPLATES.get(template, template)


def _check_labels(labels: Any, where: str) -> Optional[list[str]]:
    """The closed label set as a list, or None for a free-text task."""
    if labels is None:
        return None
    if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
        raise ValueError(f"{where}: 'labels' must be a non-empty list of strings (or null for free text), got {labels!r}")
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


@dataclass
class Task:
    """One task of a stream: its closed label set (None: free text), instruction, metric and splits.

    Every split has the :data:`COLUMNS` (``id, input, output, prompt, task_id, label_id,
    references``), with ``task_id == index``. Build from raw records with :meth:`from_records`.
    ``metric`` is a name of :data:`hf_conpet.scoring.METRICS` (``exact_match``, ``rougeL``).
    """

    name: str
    index: int
    labels: Optional[list[str]]
    instruction: str
    train: Dataset
    validation: Dataset
    test: Dataset
    metric: str = "exact_match"
    #: The format string that made the ``prompt`` column; new inputs are prompted the same way.
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        validate_task_name(self.name)
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"task {self.name!r}: index must be a non-negative int, got {self.index!r}")
        self.labels = _check_labels(self.labels, f"task {self.name!r}")
        self.metric = check_metric(self.metric, f"task {self.name!r}")
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

    def with_index(self, index: int) -> "Task":
        """This task at another position of a stream (every split's `task_id` follows)."""
        if index == self.index:
            return self
        moved = {split: getattr(self, split).remove_columns("task_id").add_column("task_id", [index] * len(getattr(self, split)))
                 for split in SPLITS}
        return replace(self, index=index, **moved)

    @property
    def is_free_text(self) -> bool:
        """No closed label set: answers are scored as text (no classification head can learn it)."""
        return self.labels is None

    def format_prompt(self, text: str, template: Optional[str] = None) -> str:
        """The prompt for a new input of this task (what ``prompt`` holds for stored examples)."""
        return _format_prompt(resolve_template(template or self.template), self.instruction, self.labels, self.name, text)

    @classmethod
    def from_records(
        cls,
        name: str,
        index: int,
        labels: Optional[Sequence[str]],
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
        """Build a task from ``{"id"?, "input", "output", "references"?}`` records (what the loaders produce).

        ``labels=None`` makes a free-text task; ``template`` is a format string or a name in
        :data:`TEMPLATES`.

        Without ``validation``, it is carved from ``train``: ``validation_size`` is a fraction of
        the training pool (the train records, capped by ``max_train``) or an absolute count; the
        draw uses ``seed``. ``max_train`` then caps the remaining train examples (a seeded random
        subset), ``max_test`` keeps the first test examples. ``source`` names where each split came
        from (for error messages).
        """
        validate_task_name(name)
        where = dict(source or {})
        labels = _check_labels(labels, f"task {name!r}")
        metric = check_metric(metric, f"task {name!r}")
        template = resolve_template(template)
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
        return cls(name=name, index=index, labels=labels, instruction=instruction, metric=metric, template=template,
                   **splits)


def _format_prompt(template: str, instruction: str, labels: Optional[Sequence[str]], task: str, text: str) -> str:
    return template.format(instruction=instruction, input=text, labels=", ".join(labels or []), task=task)


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
    records: Sequence[Mapping[str, Any]], task: str, split: str, where: str, labels: Optional[Sequence[str]]
) -> list[dict[str, Any]]:
    """Validate ``{"id"?, "input", "output", "references"?}`` records; a missing id becomes
    ``<task>-<split>-<n>``, missing references ``[output]``."""
    allowed = None if labels is None else set(labels)
    rows = []
    for number, record in enumerate(records):
        position = f"{where}, example {number}"
        if not isinstance(record, Mapping):
            raise ValueError(f"task {task!r}: {position} is not a JSON object: {record!r}")
        for key in ("input", "output"):
            if not isinstance(record.get(key), str):
                raise ValueError(f"task {task!r}: {position} needs a string {key!r}, got {record.get(key)!r}")
        if allowed is not None and record["output"] not in allowed:
            raise ValueError(
                f"task {task!r}: {position} has output {record['output']!r}, which is not one of the "
                f"task's labels {list(labels)}"
            )
        example_id = record.get("id", f"{task}-{split}-{number}")
        references = record.get("references")
        if references is None:
            references = [record["output"]]
        elif (isinstance(references, str) or not isinstance(references, Sequence) or not references
              or not all(isinstance(answer, str) for answer in references)):
            raise ValueError(f"task {task!r}: {position} has 'references' that are not a non-empty list of "
                             f"strings: {references!r}")
        row = {"id": str(example_id), "input": record["input"], "output": record["output"],
               "references": list(references)}
        if "prompt" in record:  # already formatted (a chat template applied): kept as it is
            if not isinstance(record["prompt"], str) or not record["prompt"]:
                raise ValueError(f"task {task!r}: {position} has a 'prompt' that is not a non-empty string")
            row["prompt"] = record["prompt"]
        rows.append(row)
    return rows


def _to_dataset(rows, name, index, labels, instruction, template) -> Dataset:
    label_index = {label: position for position, label in enumerate(labels or [])}
    columns = {
        "id": [row["id"] for row in rows],
        "input": [row["input"] for row in rows],
        "output": [row["output"] for row in rows],
        "prompt": [row.get("prompt") or _format_prompt(template, instruction, labels, name, row["input"]) for row in rows],
        "task_id": [index] * len(rows),
        "label_id": [label_index.get(row["output"], FREE_TEXT_LABEL_ID) for row in rows],
        "references": [row["references"] for row in rows],
    }
    return Dataset.from_dict(columns, features=COLUMNS)
