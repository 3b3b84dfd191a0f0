"""The replay memory: each finished task's stored training rows, and how they are chosen.

`ReplayMemory` keeps, per task, `"all"` its rows (Static ConPET keeps everything) or a bounded
exemplar set: `"reservoir"` (a uniform sample, Algorithm R) or `"kmeans"` (the row nearest each
K-means centroid of frozen features), as the baselines used. Saved as JSON + one JSONL per task;
loading is strict (a saved memory may come from anywhere): the manifest's fields are type-checked
and every file it names must be a plain file inside the memory's folder.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

import datasets

from ._io import atomic_write, read_json

MEMORY_FORMAT_VERSION = 1
MEMORY_MANIFEST = "replay_memory.json"
STRATEGIES = ("all", "reservoir", "kmeans")
#: Rows the default replay memory of a run keeps over all tasks together (and so the most rows
#: whose features ConPET's selector caches): every row of 10 tasks of 1000, 50 per task at 1000.
DEFAULT_MEMORY_BUDGET = 50_000


class ReplayMemory:
    """Training rows kept from finished tasks, one `datasets.Dataset` per task index.

    `strategy`:
      * `"all"` -- keep every row (Static ConPET's replay pool); `capacity` must be None.
      * `"reservoir"` -- keep a uniform random subset of at most `capacity` rows, chosen by
        reservoir sampling (Algorithm R) seeded per task, so the choice for task t does not depend
        on which tasks came before.
      * `"kmeans"` -- keep at most `capacity` exemplars: K-means over caller-supplied embeddings
        `[n, d]`, then the row nearest each centroid (distinct rows), as ConPET's baselines did.

    `group_column`: when set, `capacity` applies to each value of that column within a task
    (ConPET's baselines kept 20-100 exemplars *per class*); otherwise to the task as a whole.

    `budget`: at most this many rows in all, whatever the number of tasks: with T tasks each
    keeps at most `per_task_quota()` <= `budget // T` (the first in its seeded `priority_order`, so a task's rows only
    ever shrink to a subset of what it kept before), and memory stops growing once the budget
    is reached. A task that would leave fewer than `min_per_task` rows per task is refused.

    Rows must be JSON-serialisable (plain `datasets` values are): `save` writes JSONL, no pickle.
    """

    def __init__(
        self,
        strategy: str = "all",
        capacity: int | None = None,
        seed: int = 0,
        group_column: str | None = None,
        kmeans_iterations: int = 100,
        budget: int | None = None,
        min_per_task: int = 1,
    ) -> None:
        if budget is not None and not (isinstance(budget, int) and not isinstance(budget, bool) and budget >= 1):
            raise ValueError(f"ReplayMemory budget must be a positive integer number of rows or None, got {budget!r}")
        if not (isinstance(min_per_task, int) and not isinstance(min_per_task, bool) and min_per_task >= 1):
            raise ValueError(f"ReplayMemory min_per_task must be a positive integer, got {min_per_task!r}")
        if budget is not None and min_per_task > budget:
            raise ValueError(f"ReplayMemory min_per_task={min_per_task} is more than the whole budget of {budget} rows")
        if strategy not in STRATEGIES:
            raise ValueError(f"ReplayMemory strategy must be one of {STRATEGIES}, got {strategy!r}")
        if strategy == "all":
            if capacity is not None:
                raise ValueError(
                    f"ReplayMemory(strategy='all') keeps every row; capacity={capacity!r} contradicts "
                    "it (use strategy='reservoir' or 'kmeans' for a bounded memory)"
                )
        elif not (isinstance(capacity, int) and not isinstance(capacity, bool) and capacity >= 1):
            raise ValueError(
                f"ReplayMemory(strategy={strategy!r}) needs capacity, a positive integer number of rows "
                f"kept per task{' and group' if group_column else ''}; got {capacity!r}"
            )
        if not isinstance(kmeans_iterations, int) or kmeans_iterations < 1:
            raise ValueError(f"kmeans_iterations must be a positive integer, got {kmeans_iterations!r}")
        self.strategy = strategy
        self.capacity = capacity
        self.seed = int(seed)
        self.group_column = group_column
        self.kmeans_iterations = kmeans_iterations
        self.budget, self.min_per_task = budget, min_per_task
        self._rows_by_task: dict[int, datasets.Dataset] = {}
        # Row positions in the dataset given to `add_task` (None: all rows), and its size.
        self._source_rows_by_task: dict[int, list[int] | None] = {}
        self._num_seen_by_task: dict[int, int] = {}

    # -- filling ------------------------------------------------------------------------------

    def add_task(
        self,
        task_index: int,
        examples: datasets.Dataset | Sequence[Mapping[str, Any]],
        embeddings: Any = None,
        overwrite: bool = False,
    ) -> datasets.Dataset:
        """Store (a selection of) one finished task's training rows; returns what was kept.

        `embeddings` (float array-like `[len(examples), d]`, numpy or torch) is required by the
        `"kmeans"` strategy and ignored by the others.
        """
        task_index = _check_task_index(task_index)
        if task_index in self._rows_by_task and not overwrite:
            raise ValueError(
                f"ReplayMemory already holds task {task_index}; pass overwrite=True to replace it"
            )
        num_tasks = len(set(self._rows_by_task) | {task_index})
        if self.budget is not None and self.budget // num_tasks < self.min_per_task:
            raise ValueError(
                f"ReplayMemory budget of {self.budget} rows cannot keep {self.min_per_task} per task for "
                f"{num_tasks} tasks: raise the budget or lower min_per_task"
            )
        examples = _as_dataset(examples, what=f"task {task_index}")
        if len(examples) == 0:
            raise ValueError(
                f"task {task_index} has no examples: a replay memory task must hold at least one row"
            )
        if self.group_column is not None and self.group_column not in examples.column_names:
            raise ValueError(
                f"group_column {self.group_column!r} is not a column of task {task_index} "
                f"(columns: {examples.column_names})"
            )
        vectors = None
        if self.strategy == "kmeans":
            if embeddings is None:
                raise ValueError(
                    f"ReplayMemory(strategy='kmeans') needs embeddings [n, d] for task {task_index}"
                )
            vectors = _as_matrix(embeddings)
            if vectors.shape[0] != len(examples):
                raise ValueError(
                    f"task {task_index}: embeddings have {vectors.shape[0]} rows but there are "
                    f"{len(examples)} examples"
                )

        kept = self._select_rows(task_index, examples, vectors)
        # flatten_indices: a selection keeps only its own rows alive, not the whole task's table.
        stored = examples if kept is None else _flatten_quietly(examples.select(kept))
        self._rows_by_task[task_index] = stored.with_format(None)
        self._source_rows_by_task[task_index] = kept
        self._num_seen_by_task[task_index] = len(examples)
        self._keep_within_budget()
        return self._rows_by_task[task_index]

    def per_task_quota(self) -> int | None:
        """Rows each task may keep now (None: no budget): the fair share `budget // T` rounded down
        to a step of a geometric ladder (8 steps per doubling), so tasks shrink about every 9% of
        growth rather than at every new task (each shrink costs a pass over every task), using at
        least 91% of the budget."""
        if self.budget is None or not self._rows_by_task:
            return None
        fair = self.budget // len(self._rows_by_task)
        step, k = 1, 0
        while int(2 ** ((k + 1) / 8)) <= fair:
            k += 1
            step = int(2 ** (k / 8))
        return max(step, self.min_per_task)

    def _keep_within_budget(self) -> None:
        """Shrink every task to the quota, keeping its first rows in priority order."""
        quota = self.per_task_quota()
        if quota is None:
            return
        for task, rows in self._rows_by_task.items():
            if len(rows) <= quota:
                continue
            sources = self.source_rows(task)
            kept = sorted(self._priority_positions(task)[:quota].tolist())  # the stored (source) order is kept
            shrunk = rows.select(kept)
            if 2 * len(shrunk) <= shrunk.data.num_rows:  # copy out only once half the table is unused
                shrunk = _flatten_quietly(shrunk)
            self._rows_by_task[task] = shrunk.with_format(None)
            self._source_rows_by_task[task] = [sources[k] for k in kept]

    def _priority_positions(self, task_index: int) -> np.ndarray:
        """Positions of a task's stored rows, in its priority order."""
        ranks = priority_ranks(self._num_seen_by_task[task_index], task_index)
        return np.argsort(ranks[self.source_rows(task_index)], kind="stable")

    def in_priority_order(self, task_index: int) -> datasets.Dataset:
        """A task's stored rows in the order the budget keeps them (a prefix survives any shrink)."""
        return self.examples(task_index).select(self._priority_positions(task_index).tolist())

    def _select_rows(self, task_index: int, examples: datasets.Dataset, vectors: np.ndarray | None):
        """Row positions to keep (sorted), or None for all of them."""
        if self.strategy == "all":
            return None
        if self.group_column is None:
            groups = [np.arange(len(examples))]
        else:
            values = [json.dumps(v, sort_keys=True) for v in examples[self.group_column]]
            by_value: dict[str, list[int]] = {}
            for position, value in enumerate(values):
                by_value.setdefault(value, []).append(position)
            groups = [np.asarray(by_value[value]) for value in sorted(by_value)]
        kept: list[int] = []
        for group_number, positions in enumerate(groups):
            rng = np.random.default_rng([self.seed, task_index, group_number])
            if len(positions) <= self.capacity:
                chosen = positions
            elif self.strategy == "reservoir":
                chosen = positions[reservoir_sample(len(positions), self.capacity, rng)]
            else:
                chosen = positions[
                    kmeans_exemplars(vectors[positions], self.capacity, rng, self.kmeans_iterations)
                ]
            kept.extend(int(p) for p in chosen)
        return sorted(kept)

    # -- reading ------------------------------------------------------------------------------

    @property
    def tasks(self) -> list[int]:
        """Task indices held, ascending."""
        return sorted(self._rows_by_task)

    def examples(self, task_index: int) -> datasets.Dataset:
        """The stored rows of one task."""
        if task_index not in self._rows_by_task:
            raise KeyError(f"ReplayMemory holds no task {task_index}; it holds tasks {self.tasks}")
        return self._rows_by_task[task_index]

    def source_rows(self, task_index: int) -> list[int]:
        """Positions of the stored rows in the dataset that `add_task` received."""
        rows = self._source_rows_by_task[task_index]
        return list(range(self._num_seen_by_task[task_index])) if rows is None else list(rows)

    def num_examples(self, task_index: int) -> int:
        return len(self.examples(task_index))

    def __contains__(self, task_index: object) -> bool:
        return task_index in self._rows_by_task

    def __len__(self) -> int:
        """Total stored rows over all tasks."""
        return sum(len(rows) for rows in self._rows_by_task.values())

    def as_mapping(self) -> dict[int, datasets.Dataset]:
        return {task: self._rows_by_task[task] for task in self.tasks}

    def __repr__(self) -> str:
        sizes = {task: len(self._rows_by_task[task]) for task in self.tasks}
        budget = "" if self.budget is None else f", budget={self.budget}"
        return f"ReplayMemory(strategy={self.strategy!r}, capacity={self.capacity}{budget}, tasks={sizes})"

    # -- persistence --------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Write `replay_memory.json` + one `task_<index>.jsonl` per task (each write atomic)."""
        os.makedirs(directory, exist_ok=True)
        entries = []
        for task in self.tasks:
            rows = self._rows_by_task[task]
            file_name = f"task_{task}.jsonl"
            lines = []
            for position, row in enumerate(rows):
                try:
                    lines.append(json.dumps(row, ensure_ascii=False))
                except (TypeError, ValueError) as error:
                    raise TypeError(
                        f"ReplayMemory.save: row {position} of task {task} is not JSON-serialisable "
                        f"({error}); store plain values (text, numbers, lists)"
                    ) from error
            atomic_write(os.path.join(directory, file_name), "".join(line + "\n" for line in lines))
            entries.append(
                {
                    "task_index": task,
                    "file": file_name,
                    "num_examples": len(rows),
                    "num_seen": self._num_seen_by_task[task],
                    "source_rows": self._source_rows_by_task[task],
                    "features": rows.features.to_dict(),
                }
            )
        manifest = {
            "format_version": MEMORY_FORMAT_VERSION,
            "strategy": self.strategy,
            "capacity": self.capacity,
            "seed": self.seed,
            "group_column": self.group_column,
            "kmeans_iterations": self.kmeans_iterations,
            "budget": self.budget,
            "min_per_task": self.min_per_task,
            "tasks": entries,
        }
        # The manifest goes last: a reader never sees it pointing at files not yet written.
        atomic_write(os.path.join(directory, MEMORY_MANIFEST), json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ReplayMemory":
        """A saved memory, every field checked; files must be plain files inside `directory`."""
        directory = os.path.abspath(directory)
        manifest_path = os.path.join(directory, MEMORY_MANIFEST)
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(f"no {MEMORY_MANIFEST} in {directory}: not a saved ReplayMemory")
        manifest = read_json(manifest_path)

        def require(condition: bool, field: str, expected: str, value: Any) -> None:
            if not condition:
                raise ValueError(f"{manifest_path}: field {field!r} must be {expected}, got {value!r}"[:300])

        require(isinstance(manifest, dict), "(top level)", "a JSON object", type(manifest).__name__)
        version = manifest.get("format_version")
        if version != MEMORY_FORMAT_VERSION:
            raise ValueError(
                f"{manifest_path} has format_version {version!r}; this hf_conpet reads "
                f"{MEMORY_FORMAT_VERSION}"
            )
        require(isinstance(manifest.get("tasks"), list), "tasks", "a list", manifest.get("tasks"))
        try:
            memory = cls(
                strategy=manifest.get("strategy"), capacity=manifest.get("capacity"), seed=manifest.get("seed"),
                group_column=manifest.get("group_column"), kmeans_iterations=manifest.get("kmeans_iterations"),
                budget=manifest.get("budget"), min_per_task=manifest.get("min_per_task", 1),
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{manifest_path}: {error}") from None
        for position, entry in enumerate(manifest["tasks"]):
            where = f"tasks[{position}]"
            require(isinstance(entry, dict), where, "an object", entry)
            task = entry.get("task_index")
            require(_is_index(task) and task not in memory._rows_by_task, f"{where}.task_index",
                    "a non-negative integer, not listed before", task)
            file_name = entry.get("file")
            require(isinstance(file_name, str) and file_name == os.path.basename(file_name)
                    and file_name not in ("", ".", "..") and file_name.endswith(".jsonl"), f"{where}.file",
                    "a .jsonl file name inside the memory folder (no path)", file_name)
            path = os.path.join(directory, file_name)
            if os.path.islink(path) or not os.path.isfile(path):
                raise ValueError(f"{manifest_path}: field '{where}.file' names {file_name!r}, which is not a plain file in {directory}")
            require(_is_index(entry.get("num_examples")), f"{where}.num_examples", "a non-negative integer", entry.get("num_examples"))
            require(_is_index(entry.get("num_seen")), f"{where}.num_seen", "a non-negative integer", entry.get("num_seen"))
            source_rows = entry.get("source_rows")
            require(source_rows is None or (isinstance(source_rows, list) and all(_is_index(r) for r in source_rows)),
                    f"{where}.source_rows", "a list of row positions or null", source_rows)
            try:
                features = datasets.Features.from_dict(entry.get("features"))
            except Exception as error:  # noqa: BLE001 - datasets raises many kinds
                raise ValueError(f"{manifest_path}: field '{where}.features' is not a datasets feature spec ({error})") from None
            with open(path, encoding="utf-8") as handle:
                try:
                    rows = [json.loads(line) for line in handle if line.strip()]
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} is not valid JSON lines: {error}") from None
            if len(rows) != entry["num_examples"] or (source_rows is not None and len(source_rows) != len(rows)):
                raise ValueError(
                    f"{file_name} in {directory} has {len(rows)} rows, the manifest says "
                    f"{entry['num_examples']}: the memory on disk is incomplete"
                )
            if not all(isinstance(row, dict) and set(features) <= set(row) for row in rows):
                raise ValueError(f"{path}: every line must be an object with the columns {sorted(features)}")
            columns = {name: [row[name] for row in rows] for name in features}
            if {"prompt", "output"} <= set(features) and "references" not in features:
                # task rows saved before tasks carried their references: the answer is the only one
                features["references"] = datasets.List(datasets.Value("string"))
                columns["references"] = [[output] for output in columns["output"]]
            try:
                memory._rows_by_task[task] = datasets.Dataset.from_dict(columns, features=features)
            except Exception as error:  # noqa: BLE001
                raise ValueError(f"{path}: the rows do not fit the manifest's features ({error})") from None
            if source_rows is not None and any(r >= entry["num_seen"] for r in source_rows):
                raise ValueError(f"{manifest_path}: field '{where}.source_rows' names rows beyond num_seen {entry['num_seen']}")
            memory._source_rows_by_task[task] = source_rows
            memory._num_seen_by_task[task] = int(entry["num_seen"])
        quota = memory.per_task_quota()
        if quota is not None and any(len(rows) > quota for rows in memory._rows_by_task.values()):
            raise ValueError(f"{manifest_path}: a task holds more than the budget's {quota} rows per task")
        return memory


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def priority_order(num_rows: int, task_index: int) -> np.ndarray:
    """A task's rows in the seeded order in which they are kept when space runs short: the memory's
    budget keeps a prefix of it, and ConPET's selector caches the features of a prefix of it, so
    the two always hold the same rows (the permutation `Dataset.shuffle(seed=task_index)` draws)."""
    return np.random.default_rng(task_index).permutation(num_rows)


def priority_ranks(num_rows: int, task_index: int) -> np.ndarray:
    """rank[p]: where row p stands in `priority_order`."""
    ranks = np.empty(num_rows, dtype=np.int64)
    ranks[priority_order(num_rows, task_index)] = np.arange(num_rows)
    return ranks


def reservoir_sample(num_items: int, capacity: int, rng: np.random.Generator) -> np.ndarray:
    """Positions kept by Algorithm R streaming over `num_items` items (sorted, `capacity` of them).

    Item i >= capacity replaces a random reservoir slot with probability capacity / (i + 1); only
    the (few) replacements are looped over in Python.
    """
    if num_items <= capacity:
        return np.arange(num_items)
    reservoir = np.arange(capacity)
    later = np.arange(capacity, num_items)
    slots = np.floor(rng.random(len(later)) * (later + 1)).astype(np.int64)
    for item, slot in zip(later[slots < capacity], slots[slots < capacity]):
        reservoir[slot] = item
    return np.sort(reservoir)


def kmeans_exemplars(
    vectors: np.ndarray, num_exemplars: int, rng: np.random.Generator, iterations: int = 100
) -> np.ndarray:
    """Positions of `num_exemplars` distinct rows: the row nearest each K-means centroid.

    K-means++ seeding, then Lloyd iterations until assignments stop changing; an emptied cluster
    is re-seeded with the row farthest from its centroid. Centroids claim their nearest
    still-unclaimed row in order of closeness, so two centroids never pick the same row.
    Deterministic for a given `rng` state. (scikit-learn is not a dependency, hence our own.)
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    num_rows = vectors.shape[0]
    if num_exemplars >= num_rows:
        return np.arange(num_rows)
    centroids = _kmeans_plus_plus(vectors, num_exemplars, rng)
    assignment = None
    for _ in range(iterations):
        distances = _squared_distances(vectors, centroids)
        new_assignment = distances.argmin(axis=1)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        own_distance = distances[np.arange(num_rows), assignment]
        for cluster in range(num_exemplars):
            members = assignment == cluster
            if members.any():
                centroids[cluster] = vectors[members].mean(axis=0)
            else:
                farthest = int(own_distance.argmax())
                centroids[cluster] = vectors[farthest]
                own_distance[farthest] = -1.0  # another empty cluster takes a different row
    distances = _squared_distances(vectors, centroids)
    chosen: list[int] = []
    taken = np.zeros(num_rows, dtype=bool)
    # Resolve ties between centroids greedily: globally closest (centroid, row) pairs first.
    order = np.argsort(distances.min(axis=0), kind="stable")
    for cluster in order:
        candidates = np.where(taken, np.inf, distances[:, cluster])
        row = int(candidates.argmin())
        taken[row] = True
        chosen.append(row)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _kmeans_plus_plus(vectors: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    num_rows = vectors.shape[0]
    picked = [int(rng.integers(num_rows))]
    closest = _squared_distances(vectors, vectors[picked]).min(axis=1)
    for _ in range(1, k):
        total = closest.sum()
        if total > 0:
            row = int(rng.choice(num_rows, p=closest / total))
        else:  # fewer distinct points than clusters: any row not yet picked
            remaining = np.setdiff1d(np.arange(num_rows), picked)
            row = int(rng.choice(remaining))
        picked.append(row)
        closest = np.minimum(closest, _squared_distances(vectors, vectors[[row]])[:, 0])
    return vectors[picked].copy()


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    squared = (
        (points**2).sum(axis=1)[:, None] - 2.0 * points @ centres.T + (centres**2).sum(axis=1)[None, :]
    )
    return np.maximum(squared, 0.0)


# --------------------------------------------------------------------------------------------
# helpers shared with replay.py

def _as_dataset(examples, what: str) -> datasets.Dataset:
    if isinstance(examples, datasets.Dataset):
        return examples
    if isinstance(examples, (list, tuple)):
        if not examples:
            raise ValueError(f"{what} has no examples")
        if not all(isinstance(row, Mapping) for row in examples):
            raise TypeError(f"{what}: examples must be a datasets.Dataset or a list of dicts")
        return datasets.Dataset.from_list([dict(row) for row in examples])
    raise TypeError(
        f"{what}: examples must be a datasets.Dataset or a list of dicts, got {type(examples).__name__}"
    )


def _as_matrix(embeddings) -> np.ndarray:
    if hasattr(embeddings, "detach"):  # torch tensor, maybe on GPU / in bf16
        embeddings = embeddings.detach().float().cpu().numpy()
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [n, d], got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return vectors


def _check_task_index(task_index) -> int:
    if isinstance(task_index, bool) or not isinstance(task_index, (int, np.integer)) or task_index < 0:
        raise ValueError(f"a task index must be a non-negative integer, got {task_index!r}")
    return int(task_index)


def _flatten_quietly(rows: datasets.Dataset) -> datasets.Dataset:
    """`flatten_indices` without a progress bar per call (a continual run makes many)."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        return rows.flatten_indices()
    finally:
        if not was_disabled:
            enable_progress_bars()
