"""ConPET's dynamic replay: a memory of old tasks' examples and fixed-size mixed batches.

Replaying "all new data + all old data" makes the cost of task t grow with t. ConPET instead
trains every task after the first on a *fixed* number of batches N of size B, each holding
`n_new = int(B * r / (r + 1))` new examples and `B - n_new` old ones, and fills an old slot by
picking an old task uniformly, then one of its stored examples uniformly. The cost per task is
N * B examples whatever the number of old tasks, and small old tasks are not drowned by big ones.

Two pieces:

* `ReplayMemory` -- per-task store of training rows (`"all"`: Static ConPET keeps everything;
  `"reservoir"` and `"kmeans"`: bounded exemplar sets, as the baselines used), saved as JSON/JSONL.
* `DynamicReplaySampler` / `build_replay_dataset` -- the batch plan, usable as a DataLoader
  `batch_sampler` or materialised as a `datasets.Dataset` whose rows are already in batch order,
  so the stock `transformers.Trainer` keeps each batch's composition when run with
  `TrainingArguments(train_sampling_strategy="sequential", per_device_train_batch_size=B,
  max_steps=len(dataset) // B)` (transformers 5.23's "sequential" is a plain `SequentialSampler`).

Differences from the authors' loader (`preprocess/custom_loader.py` of Raincleared-Song/ConPET),
named on purpose: new examples are drawn from a shuffled permutation that is cycled across
batches (every new example is seen equally often, +-1) instead of being redrawn independently for
each batch; draws are seeded per (seed, task, stream) so a plan is reproducible and resumable.
The authors' 80/20 train/validation split of the batch budget is left to the caller: build a
second, smaller replay dataset from validation rows.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

import datasets

from ._io import atomic_write

MEMORY_FORMAT_VERSION = 1
MEMORY_MANIFEST = "replay_memory.json"
STRATEGIES = ("all", "reservoir", "kmeans")


# --------------------------------------------------------------------------------------------
# Replay memory
# --------------------------------------------------------------------------------------------


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

    Rows must be JSON-serialisable (plain `datasets` values are): `save` writes JSONL, no pickle.
    """

    def __init__(
        self,
        strategy: str = "all",
        capacity: int | None = None,
        seed: int = 0,
        group_column: str | None = None,
        kmeans_iterations: int = 100,
    ) -> None:
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
        return self._rows_by_task[task_index]

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
        return f"ReplayMemory(strategy={self.strategy!r}, capacity={self.capacity}, tasks={sizes})"

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
            "tasks": entries,
        }
        # The manifest goes last: a reader never sees it pointing at files not yet written.
        atomic_write(os.path.join(directory, MEMORY_MANIFEST), json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ReplayMemory":
        manifest_path = os.path.join(directory, MEMORY_MANIFEST)
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(f"no {MEMORY_MANIFEST} in {directory}: not a saved ReplayMemory")
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        version = manifest.get("format_version")
        if version != MEMORY_FORMAT_VERSION:
            raise ValueError(
                f"{manifest_path} has format_version {version!r}; this hf_conpet reads "
                f"{MEMORY_FORMAT_VERSION}"
            )
        memory = cls(
            strategy=manifest["strategy"],
            capacity=manifest["capacity"],
            seed=manifest["seed"],
            group_column=manifest["group_column"],
            kmeans_iterations=manifest["kmeans_iterations"],
        )
        for entry in manifest["tasks"]:
            task = int(entry["task_index"])
            features = datasets.Features.from_dict(entry["features"])
            with open(os.path.join(directory, entry["file"]), encoding="utf-8") as handle:
                rows = [json.loads(line) for line in handle if line.strip()]
            if len(rows) != entry["num_examples"]:
                raise ValueError(
                    f"{entry['file']} in {directory} has {len(rows)} rows, the manifest says "
                    f"{entry['num_examples']}: the memory on disk is incomplete"
                )
            columns = {name: [row[name] for row in rows] for name in features}
            memory._rows_by_task[task] = datasets.Dataset.from_dict(columns, features=features)
            memory._source_rows_by_task[task] = entry["source_rows"]
            memory._num_seen_by_task[task] = int(entry["num_seen"])
        return memory


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
# Dynamic replay batches
# --------------------------------------------------------------------------------------------


def replay_batch_split(batch_size: int, ratio: float = 1.0, has_old_tasks: bool = True) -> tuple[int, int]:
    """`(n_new, n_old)` slots per batch: `n_new = int(B * r / (r + 1))`, all new without old tasks."""
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    is_number = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
    if not is_number or not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"ratio (new:old examples per batch) must be a finite number > 0, got {ratio!r}")
    if not has_old_tasks:
        return int(batch_size), 0
    if batch_size < 2:
        raise ValueError(
            f"batch_size {batch_size} cannot mix new and old examples: replay with old tasks needs "
            "batch_size >= 2"
        )
    n_new = int(batch_size * ratio / (ratio + 1))
    if n_new < 1:
        raise ValueError(
            f"batch_size {batch_size} with new:old ratio {ratio} leaves no new example per batch "
            f"(int({batch_size} * {ratio} / {ratio + 1}) = 0); raise batch_size or ratio"
        )
    return n_new, int(batch_size) - n_new


@dataclass(frozen=True)
class ReplayPlan:
    """Which row fills each slot: arrays of shape `[num_batches, batch_size]`.

    `task_index[b, s]` is the task the row comes from, `row[b, s]` its position in that task's
    dataset (the new task's dataset or the memory's rows), `is_new[b, s]` whether it is new.
    """

    task_index: np.ndarray
    row: np.ndarray
    is_new: np.ndarray

    @property
    def num_batches(self) -> int:
        return int(self.task_index.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.task_index.shape[1])


class DynamicReplaySampler:
    """ConPET's fixed-cost batches for training one task against a memory of old tasks.

    Every epoch has `batches_per_task` batches of `batch_size` slots: `n_new` new examples
    (no repeats within a batch; across batches a shuffled permutation of the new rows is cycled,
    so each is seen equally often) and `batch_size - n_new` old slots, each an old task drawn
    uniformly then one of its stored rows uniformly. Without old tasks every slot is new. Slots
    are shuffled within each batch, as in the authors' loader. Epochs continue one seeded stream,
    so each epoch's batches are freshly drawn ("batches are redrawn every epoch").

    `batches_per_task=None` means one pass over the new rows: `ceil(len(new) / n_new)` batches.

    Iterating yields lists of indices into `self.pool` (new rows first, then each old task's rows
    in task order), so the sampler is a valid `torch.utils.data.DataLoader(pool,
    batch_sampler=sampler)`; call `set_epoch` between epochs. `build_dataset` materialises the
    batches as rows in order for the stock Trainer.
    """

    def __init__(
        self,
        new_examples: datasets.Dataset | Sequence[Mapping[str, Any]],
        memory: ReplayMemory | Mapping[int, datasets.Dataset] | None,
        batch_size: int,
        batches_per_task: int | None,
        ratio: float = 1.0,
        seed: int = 0,
        new_task_index: int | None = None,
        task_column: str | None = "task_id",
        new_flag_column: str | None = "is_new",
        shuffle_within_batch: bool = True,
    ) -> None:
        old_tasks = _old_task_datasets(memory)
        if new_task_index is None:
            new_task_index = max(old_tasks) + 1 if old_tasks else 0
        new_task_index = _check_task_index(new_task_index)
        if new_task_index in old_tasks:
            raise ValueError(
                f"the memory already holds task {new_task_index}, the task being trained: old tasks "
                "must not include the new one"
            )
        new_examples = _as_dataset(new_examples, what=f"new task {new_task_index}").with_format(None)
        if len(new_examples) == 0:
            raise ValueError(f"new task {new_task_index} has no training examples")
        self.n_new, self.n_old = replay_batch_split(batch_size, ratio, has_old_tasks=bool(old_tasks))
        if len(new_examples) < self.n_new:
            raise ValueError(
                f"new task {new_task_index} has {len(new_examples)} examples, fewer than the "
                f"{self.n_new} new slots of a batch (new examples never repeat within a batch); "
                "lower batch_size or ratio"
            )
        if batches_per_task is None:
            batches_per_task = math.ceil(len(new_examples) / self.n_new)
        if (
            not isinstance(batches_per_task, (int, np.integer))
            or isinstance(batches_per_task, bool)
            or batches_per_task < 1
        ):
            raise ValueError(f"batches_per_task must be a positive integer or None, got {batches_per_task!r}")
        for name, column in (("task_column", task_column), ("new_flag_column", new_flag_column)):
            if column is not None and not isinstance(column, str):
                raise ValueError(f"{name} must be a column name or None, got {column!r}")
        if task_column is not None and task_column == new_flag_column:
            raise ValueError(f"task_column and new_flag_column are both {task_column!r}")

        self.new_examples = new_examples
        self.old_tasks = old_tasks
        self.old_task_indices = sorted(old_tasks)
        self.new_task_index = new_task_index
        self.batch_size = int(batch_size)
        self.batches_per_task = int(batches_per_task)
        self.ratio = ratio
        self.seed = int(seed)
        self.task_column = task_column
        self.new_flag_column = new_flag_column
        self.shuffle_within_batch = shuffle_within_batch
        self.epoch = 0
        # Offsets of each source in `pool`: new rows first, then old tasks ascending.
        self._offset_by_task = {new_task_index: 0}
        offset = len(new_examples)
        for task in self.old_task_indices:
            self._offset_by_task[task] = offset
            offset += len(old_tasks[task])
        self._pool: datasets.Dataset | None = None

    # -- the plan -----------------------------------------------------------------------------

    def plan(self, num_epochs: int = 1, first_epoch: int = 0) -> ReplayPlan:
        """Batches of epochs `first_epoch .. first_epoch + num_epochs - 1`, in training order."""
        if not isinstance(num_epochs, int) or num_epochs < 1:
            raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}")
        if not isinstance(first_epoch, int) or first_epoch < 0:
            raise ValueError(f"first_epoch must be a non-negative integer, got {first_epoch!r}")
        # One stream per (seed, task), drawn epoch after epoch: epoch e continues epochs < e (the
        # new-row cycle runs on), so any epoch is reproducible from the seed alone and a resumed
        # run redraws exactly the batches it would have seen.
        rng = np.random.default_rng([self.seed, self.new_task_index])
        cycle = _Cycle(rng, len(self.new_examples))
        epochs = [self._draw_epoch(rng, cycle) for _ in range(first_epoch + num_epochs)][first_epoch:]
        return ReplayPlan(
            task_index=np.concatenate([epoch.task_index for epoch in epochs]),
            row=np.concatenate([epoch.row for epoch in epochs]),
            is_new=np.concatenate([epoch.is_new for epoch in epochs]),
        )

    def _draw_epoch(self, rng: np.random.Generator, cycle: "_Cycle") -> ReplayPlan:
        num_batches, batch_size, n_new = self.batches_per_task, self.batch_size, self.n_new
        task_index = np.full((num_batches, batch_size), self.new_task_index, dtype=np.int64)
        row = np.zeros((num_batches, batch_size), dtype=np.int64)
        is_new = np.zeros((num_batches, batch_size), dtype=bool)
        for batch in range(num_batches):
            row[batch, :n_new] = cycle.take(n_new)
        is_new[:, :n_new] = True
        if self.n_old:
            old_indices = np.asarray(self.old_task_indices, dtype=np.int64)
            sizes = np.asarray([len(self.old_tasks[t]) for t in self.old_task_indices], dtype=np.int64)
            which = rng.integers(len(old_indices), size=(num_batches, self.n_old))  # task uniformly
            task_index[:, n_new:] = old_indices[which]
            row[:, n_new:] = rng.integers(sizes[which])  # then one of its rows uniformly
        if self.shuffle_within_batch:
            order = np.argsort(rng.random((num_batches, batch_size)), axis=1)
            task_index = np.take_along_axis(task_index, order, axis=1)
            row = np.take_along_axis(row, order, axis=1)
            is_new = np.take_along_axis(is_new, order, axis=1)
        return ReplayPlan(task_index, row, is_new)

    def pool_indices(self, plan: ReplayPlan) -> np.ndarray:
        """Plan slots as indices into `pool`, shape `[num_batches, batch_size]`."""
        offsets = np.vectorize(self._offset_by_task.__getitem__, otypes=[np.int64])(plan.task_index)
        return offsets + plan.row

    # -- torch batch_sampler protocol ---------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.pool_indices(self.plan(1, first_epoch=self.epoch)):
            yield [int(i) for i in batch]

    def __len__(self) -> int:
        return self.batches_per_task

    # -- rows ---------------------------------------------------------------------------------

    @property
    def pool(self) -> datasets.Dataset:
        """All candidate rows (new task, then old tasks ascending), with the marker columns."""
        if self._pool is None:
            parts = [self._marked(self.new_examples, self.new_task_index, True)]
            parts += [self._marked(self.old_tasks[t], t, False) for t in self.old_task_indices]
            self._pool = _concatenate(parts, [self.new_task_index] + self.old_task_indices)
        return self._pool

    def _marked(self, rows: datasets.Dataset, task: int, is_new: bool) -> datasets.Dataset:
        rows = rows.with_format(None)
        for column, value in ((self.task_column, task), (self.new_flag_column, is_new)):
            if column is None:
                continue
            if column in rows.column_names:
                rows = rows.remove_columns(column)
            rows = rows.add_column(column, [value] * len(rows))
        return rows

    def batches(self, epoch: int | None = None) -> list[list[dict[str, Any]]]:
        """One epoch's batches as lists of row dicts (e.g. for a hand-written selector loop)."""
        plan = self.plan(1, first_epoch=self.epoch if epoch is None else epoch)
        pool = self.pool
        return [[pool[int(i)] for i in batch] for batch in self.pool_indices(plan)]

    def build_dataset(self, num_epochs: int = 1) -> datasets.Dataset:
        """`num_epochs * batches_per_task * batch_size` rows, consecutive `batch_size` rows = one batch."""
        indices = self.pool_indices(self.plan(num_epochs)).reshape(-1)
        return _flatten_quietly(self.pool.select(indices.tolist()))


def build_replay_dataset(
    new_examples: datasets.Dataset | Sequence[Mapping[str, Any]],
    memory: ReplayMemory | Mapping[int, datasets.Dataset] | None,
    batch_size: int,
    batches_per_task: int | None,
    ratio: float = 1.0,
    seed: int = 0,
    new_task_index: int | None = None,
    num_epochs: int = 1,
    task_column: str | None = "task_id",
    new_flag_column: str | None = "is_new",
    shuffle_within_batch: bool = True,
) -> datasets.Dataset:
    """The training set of one task under dynamic replay, rows in batch order.

    Train on it with the stock Trainer and `TrainingArguments(train_sampling_strategy=
    "sequential", per_device_train_batch_size=batch_size, max_steps=len(dataset) // batch_size)`
    (and `remove_unused_columns=False` or a collator that drops the marker columns). Do not use
    Trainer epochs to repeat it: pass `num_epochs` here so each epoch's batches are redrawn.
    `task_column` holds each row's task index (new rows: `new_task_index`, default one past the
    last old task), `new_flag_column` whether it is new; None leaves a column out.
    """
    sampler = DynamicReplaySampler(
        new_examples,
        memory,
        batch_size=batch_size,
        batches_per_task=batches_per_task,
        ratio=ratio,
        seed=seed,
        new_task_index=new_task_index,
        task_column=task_column,
        new_flag_column=new_flag_column,
        shuffle_within_batch=shuffle_within_batch,
    )
    return sampler.build_dataset(num_epochs)


class _Cycle:
    """Rows of a shuffled permutation, reshuffled when used up; `take(k)` never repeats a row.

    When a take straddles two permutations, the rows it already got from the old one are moved
    to the back of the new one, so every permutation still shows each row exactly once and the
    counts of any two rows differ by at most one.
    """

    def __init__(self, rng: np.random.Generator, num_rows: int) -> None:
        self.rng = rng
        self.num_rows = num_rows
        self.permutation = rng.permutation(num_rows)
        self.position = 0

    def take(self, count: int) -> np.ndarray:
        taken = self.permutation[self.position : self.position + count]
        self.position += len(taken)
        if len(taken) < count:
            fresh = self.rng.permutation(self.num_rows)
            already = np.isin(fresh, taken)
            self.permutation = np.concatenate([fresh[~already], fresh[already]])
            needed = count - len(taken)
            taken = np.concatenate([taken, self.permutation[:needed]])
            self.position = needed
        return taken


def _old_task_datasets(memory) -> dict[int, datasets.Dataset]:
    if memory is None:
        return {}
    mapping = memory.as_mapping() if isinstance(memory, ReplayMemory) else dict(memory)
    old_tasks = {}
    for task, rows in mapping.items():
        task = _check_task_index(task)
        rows = _as_dataset(rows, what=f"old task {task}")
        if len(rows) == 0:
            raise ValueError(
                f"old task {task} has no stored examples: every replayed task needs at least one row"
            )
        old_tasks[task] = rows
    return old_tasks


def _concatenate(parts: list[datasets.Dataset], tasks: list[int]) -> datasets.Dataset:
    columns = [set(part.column_names) for part in parts]
    if any(c != columns[0] for c in columns):
        described = "; ".join(f"task {t}: {sorted(c)}" for t, c in zip(tasks, columns))
        raise ValueError(f"replayed tasks must share one set of columns, got {described}")
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError:
        # Same columns, different types (e.g. one ClassLabel per task): fall back to plain values.
        warnings.warn(
            "replayed tasks have differently typed columns ("
            + "; ".join(f"task {t}: {p.features}" for t, p in zip(tasks, parts))
            + "); building the replay rows from plain values",
            stacklevel=3,
        )
        rows = [row for part in parts for row in part]
        return datasets.Dataset.from_list(rows)


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

