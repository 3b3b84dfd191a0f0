"""ConPET's dynamic replay: a memory of old tasks' examples and fixed-size mixed batches.

Replaying "all new data + all old data" makes the cost of task t grow with t. ConPET instead
trains every task after the first on a *fixed* number of batches N of size B, each holding
`n_new = int(B * r / (r + 1))` new examples and `B - n_new` old ones, and fills an old slot by
picking an old task uniformly, then one of its stored examples uniformly. The cost per task is
N * B examples whatever the number of old tasks, and small old tasks are not drowned by big ones.

The memory of old tasks' rows lives in `memory.py` (`ReplayMemory`); this module builds the batches:
`DynamicReplaySampler` / `build_replay_dataset` -- the batch plan, usable as a DataLoader
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

import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

import datasets

from .memory import ReplayMemory, _as_dataset, _check_task_index, _flatten_quietly

__all__ = ["DynamicReplaySampler", "ReplayPlan", "build_replay_dataset", "replay_batch_split"]


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
