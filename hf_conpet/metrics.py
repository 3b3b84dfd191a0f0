"""Continual-learning metrics over an accuracy matrix (scores of any metric, as fractions).

The accuracy matrix follows SAPT / O-LoRA: ``a[j][i]`` is the score on task ``i`` measured right
after training task ``j`` (rows = "after training", columns = "evaluated on"), 0-indexed here.
Entries above the diagonal (``i > j``: task not trained yet) may be ``None``. Scores are
fractions in [0, 1] of the task's own metric (exact match or ROUGE-L, see `scoring.py`); tables
print them as percentages.

With ``T`` rows (tasks trained so far):

- AP   = mean_i a[T-1][i]                                  (average performance at the end)
- F.Ra = mean_{i<T-1} (max_{i<=j<=T-2} a[j][i] - a[T-1][i])  (forgetting; negative = improved)
- BWT  = mean_{i<T-1} (a[T-1][i] - a[i][i])                 (backward transfer)
- FWT  = mean_i (a[i][i] - single_task_score[i])             (forward transfer; needs baselines)

Edge case, chosen and kept: with a single row (T = 1) there is no old task, so F.Ra and BWT are
``None`` ("undefined"), not 0.0 — averaging zeros into cross-run means would flatter a method.
FWT is ``None`` whenever single-task scores are not given; SAPT's released script subtracts a
debug constant there, which makes its FWT meaningless, so we never invent a baseline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

# Answer scoring lives in scoring.py; these names stay importable from here.
from .scoring import EXACT_MATCH_MODULE_PATH, ROUGE_L_MODULE_PATH, exact_match, load_exact_match, load_rouge_l
from .scoring import check_metric, normalize_answer, rouge_l

__all__ = [
    "EXACT_MATCH_MODULE_PATH",
    "ROUGE_L_MODULE_PATH",
    "SUMMARY_KEYS",
    "ContinualMetrics",
    "average_performance",
    "backward_transfer",
    "exact_match",
    "forgetting_drops",
    "forgetting_rate",
    "forward_transfer",
    "load_exact_match",
    "load_rouge_l",
    "normalize_answer",
    "rouge_l",
    "selector_accuracy",
]

Score = Optional[float]
Matrix = Sequence[Sequence[Score]]

#: Keys of :meth:`ContinualMetrics.summary`, in display order.
SUMMARY_KEYS = ("AP", "F.Ra", "BWT", "FWT", "selector_accuracy")

_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- matrix metrics


def _checked_rows(matrix: Matrix) -> list[list[Score]]:
    """Validate the lower triangle that every metric needs and return the rows as lists."""
    if isinstance(matrix, (str, bytes)) or not isinstance(matrix, Sequence):
        raise TypeError("the accuracy matrix must be a sequence of rows")
    rows = [list(row) for row in matrix]
    if not rows:
        raise ValueError("the accuracy matrix has no rows: train at least one task first")
    for j, row in enumerate(rows):
        if len(row) < j + 1:
            raise ValueError(
                f"row {j} of the accuracy matrix has {len(row)} entries; it needs at least {j + 1} "
                f"(tasks 0..{j} have been trained)"
            )
        for i in range(j + 1):
            _check_score(row[i], f"a[{j}][{i}]", allow_none=False)
    return rows


def _check_score(value: Any, where: str, *, allow_none: bool) -> None:
    if value is None:
        if allow_none:
            return
        raise ValueError(f"{where} is missing: every task trained so far must be scored")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number in [0, 1], got {value!r}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{where} = {value!r} is not a fraction in [0, 1]")


def average_performance(matrix: Matrix) -> float:
    """AP: mean score over all trained tasks after training the last one."""
    rows = _checked_rows(matrix)
    last = len(rows) - 1
    return sum(rows[last][i] for i in range(last + 1)) / (last + 1)


def forgetting_drops(matrix: Matrix) -> list[float]:
    """Per old task, its best score before the last row minus its score in the last row."""
    rows = _checked_rows(matrix)
    last = len(rows) - 1
    return [max(rows[j][i] for j in range(i, last)) - rows[last][i] for i in range(last)]


def forgetting_rate(matrix: Matrix) -> Optional[float]:
    """F.Ra: mean drop from each old task's best earlier score to its final score (None if T=1)."""
    drops = forgetting_drops(matrix)
    return sum(drops) / len(drops) if drops else None


def backward_transfer(matrix: Matrix) -> Optional[float]:
    """BWT: mean change of each old task's score from just after its training to the end (None if T=1)."""
    rows = _checked_rows(matrix)
    last = len(rows) - 1
    if last == 0:
        return None
    return sum(rows[last][i] - rows[i][i] for i in range(last)) / last


def forward_transfer(matrix: Matrix, single_task_scores: Optional[Sequence[Score]] = None) -> Optional[float]:
    """FWT: mean gain of each task's just-trained score over its single-task baseline.

    None without baselines. Baselines must cover every trained task.
    """
    rows = _checked_rows(matrix)
    if single_task_scores is None:
        return None
    count = len(rows)
    if len(single_task_scores) < count:
        raise ValueError(
            f"forward_transfer needs a single-task score for each of the {count} trained tasks, "
            f"got {len(single_task_scores)}"
        )
    for i in range(count):
        _check_score(single_task_scores[i], f"single_task_scores[{i}]", allow_none=False)
    return sum(rows[i][i] - single_task_scores[i] for i in range(count)) / count


def selector_accuracy(correct: Sequence[int], total: Sequence[int]) -> Optional[float]:
    """Fraction of test examples routed to their own task, pooled over tasks from per-task counts.

    Pooling counts (not averaging per-task fractions) weighs every example once, as the
    "whole accuracy" of ConPET does. None when there are no examples at all.
    """
    if len(correct) != len(total):
        raise ValueError(f"selector_accuracy got {len(correct)} correct counts but {len(total)} totals")
    for index, (hits, count) in enumerate(zip(correct, total)):
        if (
            isinstance(hits, bool)
            or isinstance(count, bool)
            or not isinstance(hits, int)
            or not isinstance(count, int)
        ):
            raise TypeError(f"selector counts for task {index} must be integers, got {hits!r}/{count!r}")
        if count < 0 or not 0 <= hits <= count:
            raise ValueError(f"selector counts for task {index} are impossible: {hits} correct of {count}")
    examples = sum(total)
    return sum(correct) / examples if examples else None


# --------------------------------------------------------------------------- container


SelectorCounts = Optional[tuple[int, int]]


@dataclass
class ContinualMetrics:
    """Everything measured along one task stream, serialisable to plain JSON.

    ``matrix`` grows one row per trained task (``add_row``); a row has one entry per task in
    ``task_names`` (``None`` where not evaluated). ``selector_counts[j][i]`` holds
    ``(correct, total)`` routing counts for task i's test examples after training task j; counts,
    not fractions, so accuracies pool exactly. Summaries use only the rows trained so far.
    ``task_metrics`` names each task's metric (exact match, ROUGE-L, ...); ``metric`` is then
    their common name, or "mixed". Without it every task is scored by ``metric``.
    """

    task_names: list[str]
    matrix: list[list[Score]] = field(default_factory=list)
    single_task_scores: Optional[list[Score]] = None
    selector_counts: Optional[list[list[SelectorCounts]]] = None
    metric: str = "exact_match"
    #: How many test examples are behind each task's latest score (the card says so beside it).
    examples_scored: Optional[list[Optional[int]]] = None
    task_metrics: Optional[list[str]] = None

    def __post_init__(self) -> None:
        self.task_names = list(self.task_names)
        if not self.task_names:
            raise ValueError("ContinualMetrics needs at least one task name")
        if any(not isinstance(name, str) or not name for name in self.task_names):
            raise ValueError(f"task names must be non-empty strings, got {self.task_names!r}")
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"task names must be unique, got {self.task_names!r}")
        count = len(self.task_names)
        if self.task_metrics is not None:
            self.task_metrics = list(self.task_metrics)
            if len(self.task_metrics) != count:
                raise ValueError(f"task_metrics names {len(self.task_metrics)} metrics for {count} tasks")
            for name, metric in zip(self.task_names, self.task_metrics):
                check_metric(metric, f"task {name!r}")
            self.metric = self.task_metrics[0] if len(set(self.task_metrics)) == 1 else "mixed"
        if len(self.matrix) > count:
            raise ValueError(f"the matrix has {len(self.matrix)} rows but there are only {count} tasks")
        self.matrix = [self._padded(row, f"matrix row {j}") for j, row in enumerate(self.matrix)]
        for j, row in enumerate(self.matrix):
            for i, value in enumerate(row):
                _check_score(value, f"a[{j}][{i}] ({self.task_names[i]!r})", allow_none=i > j)
        if self.single_task_scores is not None:
            self.single_task_scores = self._padded(self.single_task_scores, "single_task_scores")
            for i, value in enumerate(self.single_task_scores):
                _check_score(value, f"single_task_scores[{i}] ({self.task_names[i]!r})", allow_none=True)
        if self.examples_scored is not None:
            self.examples_scored = self._padded(self.examples_scored, "examples_scored")
            for i, count in enumerate(self.examples_scored):
                if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
                    raise ValueError(f"examples_scored[{i}] must be a non-negative integer or None, got {count!r}")
        if self.selector_counts is not None:
            if len(self.selector_counts) > len(self.matrix):
                raise ValueError(
                    f"selector_counts has {len(self.selector_counts)} rows but the matrix only "
                    f"{len(self.matrix)}"
                )
            checked = []
            for j, row in enumerate(self.selector_counts):
                padded = self._padded(row, f"selector_counts row {j}")
                checked.append(
                    [
                        self._checked_counts(cell, f"selector_counts[{j}][{i}]")
                        for i, cell in enumerate(padded)
                    ]
                )
            self.selector_counts = checked

    # -- construction

    def _padded(self, row: Sequence[Any], what: str) -> list[Any]:
        row = list(row)
        if len(row) > len(self.task_names):
            raise ValueError(f"{what} has {len(row)} entries but there are only {len(self.task_names)} tasks")
        return row + [None] * (len(self.task_names) - len(row))

    @staticmethod
    def _checked_counts(cell: Any, where: str) -> SelectorCounts:
        if cell is None:
            return None
        if isinstance(cell, (str, bytes)) or not isinstance(cell, Sequence) or len(cell) != 2:
            raise ValueError(f"{where} must be a (correct, total) pair or None, got {cell!r}")
        hits, count = cell
        selector_accuracy([hits], [count])  # validates the pair
        return (hits, count)

    def _row_from(
        self, values: Union[Sequence[Any], Mapping[str, Any], None], what: str
    ) -> Optional[list[Any]]:
        if values is None:
            return None
        if isinstance(values, Mapping):
            unknown = sorted(set(values) - set(self.task_names))
            if unknown:
                raise ValueError(f"{what} names unknown tasks {unknown}; known: {self.task_names}")
            return [values.get(name) for name in self.task_names]
        return self._padded(values, what)

    def add_row(
        self,
        scores: Union[Sequence[Score], Mapping[str, Score]],
        selector_counts: Union[Sequence[SelectorCounts], Mapping[str, SelectorCounts], None] = None,
        examples_scored: Optional[Sequence[Optional[int]]] = None,
    ) -> None:
        """Record the evaluation after training the next task (by position or by task name);
        `examples_scored`: how many test examples each score of the row used."""
        j = len(self.matrix)
        if j >= len(self.task_names):
            raise ValueError(f"all {len(self.task_names)} tasks already have a row")
        row = self._row_from(scores, f"row {j}")
        for i, value in enumerate(row):
            _check_score(value, f"a[{j}][{i}] ({self.task_names[i]!r})", allow_none=i > j)
        counts_row = self._row_from(selector_counts, f"selector counts of row {j}")
        if counts_row is not None:
            counts_row = [
                self._checked_counts(cell, f"selector_counts[{j}][{i}]") for i, cell in enumerate(counts_row)
            ]
        if counts_row is not None or self.selector_counts is not None:
            empty_row = [None] * len(self.task_names)
            existing = list(self.selector_counts or [])
            existing += [list(empty_row) for _ in range(j - len(existing))]
            self.selector_counts = existing + [counts_row or list(empty_row)]
        if examples_scored is not None:
            merged = list(self.examples_scored or [None] * len(self.task_names))
            for i, count in enumerate(examples_scored):
                if count is not None:
                    merged[i] = int(count)
            self.examples_scored = merged
        self.matrix.append(row)

    # -- reading

    def metric_of(self, task: Union[int, str]) -> str:
        """The metric behind one task's scores (by position or name)."""
        index = self.task_names.index(task) if isinstance(task, str) else task
        return self.metric if self.task_metrics is None else self.task_metrics[index]

    @property
    def metric_label(self) -> str:
        """The metrics of the stream as one short text: "rougeL", or "exact_match / rougeL"."""
        if self.task_metrics is None:
            return self.metric
        return " / ".join(dict.fromkeys(self.task_metrics))

    @property
    def tasks_seen(self) -> int:
        """Number of tasks trained so far (rows of the matrix)."""
        return len(self.matrix)

    def selector_accuracy(self, row: int = -1) -> Optional[float]:
        """Pooled routing accuracy over the tasks counted in one row (default: the latest)."""
        if not self.selector_counts or not self.matrix:
            return None
        index = row if row >= 0 else len(self.matrix) + row
        if not 0 <= index < len(self.selector_counts):
            return None
        cells = [cell for cell in self.selector_counts[index] if cell is not None]
        if not cells:
            return None
        return selector_accuracy([hits for hits, _ in cells], [count for _, count in cells])

    def summary(self) -> dict[str, Optional[float]]:
        """AP, F.Ra, BWT, FWT and selector accuracy over the tasks trained so far (None = n/a)."""
        if not self.matrix:
            return {key: None for key in SUMMARY_KEYS} | {"tasks_seen": 0}
        single = None
        if self.single_task_scores is not None and all(
            score is not None for score in self.single_task_scores[: self.tasks_seen]
        ):
            single = self.single_task_scores
        return {
            "AP": average_performance(self.matrix),
            "F.Ra": forgetting_rate(self.matrix),
            "BWT": backward_transfer(self.matrix),
            "FWT": forward_transfer(self.matrix, single),
            "selector_accuracy": self.selector_accuracy(),
            "tasks_seen": self.tasks_seen,
        }

    # -- serialisation

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict; ``summary`` is included for readers and ignored on load."""
        return {
            "format_version": _FORMAT_VERSION,
            "metric": self.metric,
            "task_names": list(self.task_names),
            "matrix": [list(row) for row in self.matrix],
            "single_task_scores": None if self.single_task_scores is None else list(self.single_task_scores),
            "selector_counts": None
            if self.selector_counts is None
            else [[None if cell is None else list(cell) for cell in row] for row in self.selector_counts],
            "examples_scored": None if self.examples_scored is None else list(self.examples_scored),
            "task_metrics": None if self.task_metrics is None else list(self.task_metrics),
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContinualMetrics:
        """Inverse of :meth:`to_dict` (validates everything again)."""
        version = data.get("format_version", _FORMAT_VERSION)
        if version != _FORMAT_VERSION:
            raise ValueError(
                f"unsupported ContinualMetrics format_version {version!r} "
                f"(this library reads {_FORMAT_VERSION})"
            )
        if "task_names" not in data:
            raise ValueError("ContinualMetrics data lacks 'task_names'")
        return cls(
            task_names=data["task_names"],
            matrix=data.get("matrix") or [],
            single_task_scores=data.get("single_task_scores"),
            selector_counts=data.get("selector_counts"),
            metric=data.get("metric", "exact_match"),
            examples_scored=data.get("examples_scored"),
            task_metrics=data.get("task_metrics"),
        )

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ContinualMetrics:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def table(self) -> str:
        """Printable matrix (rows: after training, columns: evaluated on; in %) and summary."""

        def percent(value: Optional[float], missing: str = "-") -> str:
            return missing if value is None else f"{100 * value:.1f}"

        def signed(value: Optional[float]) -> str:
            return "n/a" if value is None else f"{100 * value:+.1f}"

        stub = "after \\ on"
        has_selector = self.selector_counts is not None
        header = [stub, *self.task_names] + (["selector"] if has_selector else [])
        lines = []
        if self.metric == "mixed":  # say under each column what its scores measure
            lines.append(["metric", *self.task_metrics] + ([""] if has_selector else []))
        for j, row in enumerate(self.matrix):
            cells = [self.task_names[j], *(percent(value) for value in row)]
            if has_selector:
                cells.append(percent(self.selector_accuracy(j)))
            lines.append(cells)
        if self.single_task_scores is not None:
            lines.append(
                ["single-task", *(percent(value) for value in self.single_task_scores)]
                + ([""] if has_selector else [])
            )
        widths = [max(len(str(cells[k])) for cells in [header, *lines]) for k in range(len(header))]

        def render(cells: Sequence[str]) -> str:
            first = str(cells[0]).ljust(widths[0])
            rest = (str(cell).rjust(width) for cell, width in zip(cells[1:], widths[1:]))
            return "  ".join([first, *rest]).rstrip()

        rule = "-" * len(render(header))
        summary = self.summary()
        summary_line = (
            f"{self.metric_label}, {summary['tasks_seen']}/{len(self.task_names)} tasks trained (scores in %)\n"
            f"AP {percent(summary['AP'], 'n/a')}  F.Ra {signed(summary['F.Ra'])}  "
            f"BWT {signed(summary['BWT'])}  FWT {signed(summary['FWT'])}  "
            f"selector {percent(summary['selector_accuracy'], 'n/a')}"
        )
        return "\n".join([render(header), rule, *(render(cells) for cells in lines), rule, summary_line])

    def __str__(self) -> str:
        return self.table()
