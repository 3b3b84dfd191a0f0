"""Dynamic replay (ConPET): memory strategies, batch composition, Trainer integration, persistence."""

from __future__ import annotations

import collections
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import datasets
from hf_conpet.memory import ReplayMemory, kmeans_exemplars, reservoir_sample
from hf_conpet.replay import DynamicReplaySampler, build_replay_dataset, replay_batch_split

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def task_rows(task: int, size: int) -> datasets.Dataset:
    """Rows that name their origin, so a replayed row can be traced back to (task, position)."""
    return datasets.Dataset.from_dict(
        {
            "uid": [f"t{task}-r{i}" for i in range(size)],
            "input": [f"text {i} of task {task}" for i in range(size)],
            "value": [float(task * 1000 + i) for i in range(size)],
        }
    )


def parse_uid(uid: str) -> tuple[int, int]:
    task, row = uid.split("-")
    return int(task[1:]), int(row[1:])


def batches_of(dataset: datasets.Dataset, batch_size: int) -> list[dict[str, list]]:
    return [dataset[start : start + batch_size] for start in range(0, len(dataset), batch_size)]


# ----------------------------------------------------------------------------------------------
# Batch composition
# ----------------------------------------------------------------------------------------------

@st.composite
def replay_setups(draw):
    batch_size = draw(st.integers(2, 12))
    ratio = draw(st.sampled_from([0.5, 1, 1.0, 2, 3.5, 7]))
    num_old = draw(st.integers(0, 4))
    assume(num_old == 0 or int(batch_size * ratio / (ratio + 1)) >= 1)
    old_sizes = draw(st.lists(st.integers(1, 7), min_size=num_old, max_size=num_old))
    n_new, _ = replay_batch_split(batch_size, ratio, has_old_tasks=num_old > 0)
    new_size = draw(st.integers(max(n_new, 1), 30))
    batches = draw(st.integers(1, 15))
    seed = draw(st.integers(0, 2**16))
    return batch_size, ratio, old_sizes, new_size, batches, seed


@FAST
@given(replay_setups())
def test_every_batch_is_composed_as_conpet_specifies(setup):
    batch_size, ratio, old_sizes, new_size, num_batches, seed = setup
    memory = {task: task_rows(task, size) for task, size in enumerate(old_sizes)}
    new_task = len(old_sizes)
    dataset = build_replay_dataset(
        task_rows(new_task, new_size), memory, batch_size=batch_size, batches_per_task=num_batches,
        ratio=ratio, seed=seed,
    )
    expected_new = int(batch_size * ratio / (ratio + 1)) if old_sizes else batch_size

    assert len(dataset) == num_batches * batch_size
    batches = batches_of(dataset, batch_size)
    assert len(batches) == num_batches
    for batch in batches:
        origins = [parse_uid(uid) for uid in batch["uid"]]
        new_rows = [row for (task, row) in origins if task == new_task]
        assert sum(batch["is_new"]) == expected_new == len(new_rows)
        assert len(set(new_rows)) == len(new_rows), "a new example repeats within a batch"
        for (task, row), task_id, is_new in zip(origins, batch["task_id"], batch["is_new"]):
            assert task_id == task  # the task column names the row's own task
            assert is_new == (task == new_task)
            if not is_new:
                assert task in memory and row < old_sizes[task]  # old slots only from old tasks


@FAST
@given(replay_setups())
def test_new_examples_are_cycled_evenly(setup):
    batch_size, ratio, old_sizes, new_size, num_batches, seed = setup
    memory = {task: task_rows(task, size) for task, size in enumerate(old_sizes)}
    sampler = DynamicReplaySampler(
        task_rows(99, new_size), memory, batch_size, num_batches, ratio=ratio, seed=seed, new_task_index=99
    )
    plan = sampler.plan(num_epochs=2)
    counts = np.bincount(plan.row[plan.is_new], minlength=new_size)
    assert counts.max() - counts.min() <= 1


@FAST
@given(st.integers(3, 16), st.sampled_from([0.5, 1.0, 3.0]), st.integers(1, 30), st.integers(0, 8))
def test_cost_is_independent_of_the_number_of_old_tasks(batch_size, ratio, num_batches, num_old):
    memory = {task: task_rows(task, 5) for task in range(num_old)}
    sampler = DynamicReplaySampler(
        task_rows(50, 40), memory, batch_size, num_batches, ratio=ratio, new_task_index=50
    )
    assert len(sampler) == num_batches
    assert sampler.plan().task_index.shape == (num_batches, batch_size)
    assert sum(len(batch) for batch in sampler) == num_batches * batch_size


def test_ratio_one_gives_half_new_half_old():
    assert replay_batch_split(8, 1.0) == (4, 4)  # ConPET's default: 4 new + 4 old
    assert replay_batch_split(8, 3) == (6, 2)
    assert replay_batch_split(8, 0.5) == (2, 6)
    assert replay_batch_split(8, 1.0, has_old_tasks=False) == (8, 0)


def test_first_task_batches_are_all_new():
    dataset = build_replay_dataset(task_rows(0, 10), None, batch_size=4, batches_per_task=5)
    assert all(dataset["is_new"]) and set(dataset["task_id"]) == {0}
    assert len(dataset) == 20


def test_old_slots_are_task_uniform_then_row_uniform():
    # Very unequal old tasks: slots must still split evenly over tasks, not over rows.
    sizes = {0: 1, 1: 10, 2: 300}
    memory = {task: task_rows(task, size) for task, size in sizes.items()}
    sampler = DynamicReplaySampler(task_rows(3, 50), memory, batch_size=8, batches_per_task=3000, seed=7)
    plan = sampler.plan()
    old_tasks = plan.task_index[~plan.is_new]
    assert len(old_tasks) == 3000 * 4
    shares = np.bincount(old_tasks, minlength=3) / len(old_tasks)
    # Standard error of a share is sqrt(1/3 * 2/3 / 12000) ~ 0.0043: 0.025 is ~6 sigma.
    assert np.all(np.abs(shares - 1 / 3) < 0.025), shares
    rows_of_task_1 = plan.row[(plan.task_index == 1) & ~plan.is_new]
    counts = np.bincount(rows_of_task_1, minlength=10)
    expected = len(rows_of_task_1) / 10
    chi_square = ((counts - expected) ** 2 / expected).sum()
    assert chi_square < 30, counts  # 9 degrees of freedom: p < 0.001 beyond ~27.9


def test_plan_is_seeded_and_epochs_are_redrawn():
    memory = {0: task_rows(0, 20)}
    make = lambda seed: DynamicReplaySampler(task_rows(1, 20), memory, 8, 10, seed=seed)  # noqa: E731
    first, again, other = make(3).plan(2), make(3).plan(2), make(4).plan(2)
    assert np.array_equal(first.row, again.row) and np.array_equal(first.task_index, again.task_index)
    assert not np.array_equal(first.row, other.row)
    epoch0, epoch1 = make(3).plan(1, first_epoch=0), make(3).plan(1, first_epoch=1)
    assert not np.array_equal(epoch0.row, epoch1.row)
    assert np.array_equal(np.concatenate([epoch0.row, epoch1.row]), first.row)  # one stream


def test_memory_object_and_mapping_give_the_same_batches():
    memory = ReplayMemory("all")
    memory.add_task(0, task_rows(0, 6))
    memory.add_task(1, task_rows(1, 3))
    from_memory = build_replay_dataset(task_rows(2, 9), memory, batch_size=6, batches_per_task=4, seed=1)
    from_mapping = build_replay_dataset(
        task_rows(2, 9), {0: task_rows(0, 6), 1: task_rows(1, 3)}, batch_size=6, batches_per_task=4, seed=1
    )
    assert from_memory.to_dict() == from_mapping.to_dict()


def test_one_pass_default_and_optional_columns():
    dataset = build_replay_dataset(
        task_rows(1, 10), {0: task_rows(0, 3)}, batch_size=4, batches_per_task=None,
        task_column=None, new_flag_column=None,
    )
    assert len(dataset) == 5 * 4  # ceil(10 / 2 new per batch) batches
    assert dataset.column_names == ["uid", "input", "value"]
    # An existing task column is overwritten with the task index the row comes from.
    with_names = task_rows(1, 4).add_column("task_id", ["sst2"] * 4)
    old = task_rows(0, 2).add_column("task_id", ["yelp"] * 2)
    dataset = build_replay_dataset(with_names, {0: old}, batch_size=2, batches_per_task=3)
    assert set(dataset["task_id"]) <= {0, 1}


def test_batch_sampler_drives_a_torch_dataloader():
    memory = {0: task_rows(0, 5), 1: task_rows(1, 5)}
    sampler = DynamicReplaySampler(task_rows(2, 12), memory, batch_size=6, batches_per_task=4, seed=2)
    loader = torch.utils.data.DataLoader(
        sampler.pool, batch_sampler=sampler, collate_fn=lambda rows: [row["uid"] for row in rows]
    )
    seen = list(loader)
    assert len(seen) == 4
    expected = build_replay_dataset(task_rows(2, 12), memory, batch_size=6, batches_per_task=4, seed=2)
    assert [uid for batch in seen for uid in batch] == expected["uid"]
    sampler.set_epoch(1)
    assert [uid for batch in loader for uid in batch] != expected["uid"]


class _RecordingModel(torch.nn.Module):
    """Stands in for a model: remembers what every training batch held."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[dict[str, list]] = []

    def forward(self, task_id, is_new, value, uid=None, **_):
        self.batches.append({"task_id": task_id.tolist(), "is_new": is_new.tolist(), "uid": list(uid)})
        return {"loss": ((self.weight - value.float().mean() / 1000) ** 2).sum()}


def _collate(rows):
    return {
        "task_id": torch.tensor([row["task_id"] for row in rows]),
        "is_new": torch.tensor([row["is_new"] for row in rows]),
        "value": torch.tensor([row["value"] for row in rows]),
        "uid": [row["uid"] for row in rows],
    }


def test_stock_trainer_with_sequential_sampling_keeps_every_batch(tmp_path):
    from transformers import Trainer, TrainingArguments

    batch_size, num_batches = 6, 7
    memory = {0: task_rows(0, 4), 1: task_rows(1, 9)}
    dataset = build_replay_dataset(
        task_rows(2, 11), memory, batch_size=batch_size, batches_per_task=num_batches, seed=5
    )
    model = _RecordingModel()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        train_sampling_strategy="sequential",
        per_device_train_batch_size=batch_size,
        max_steps=len(dataset) // batch_size,
        remove_unused_columns=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        learning_rate=1e-2,
    )
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=_collate).train()

    assert len(model.batches) == num_batches
    for seen, planned in zip(model.batches, batches_of(dataset, batch_size)):
        assert seen["uid"] == planned["uid"]
        assert sum(seen["is_new"]) == 3
        for task, is_new in zip(seen["task_id"], seen["is_new"]):
            assert task == 2 if is_new else task in (0, 1)


# ----------------------------------------------------------------------------------------------
# Errors that name the problem
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0, -1, float("nan"), float("inf"), True, "1"])
def test_bad_ratio_is_refused(ratio):
    with pytest.raises(ValueError, match="ratio"):
        build_replay_dataset(task_rows(1, 8), {0: task_rows(0, 3)}, 4, batches_per_task=2, ratio=ratio)


def test_batch_too_small_to_mix_is_refused():
    with pytest.raises(ValueError, match="batch_size >= 2"):
        build_replay_dataset(task_rows(1, 8), {0: task_rows(0, 3)}, batch_size=1, batches_per_task=2)
    with pytest.raises(ValueError, match="no new example"):
        build_replay_dataset(task_rows(1, 8), {0: task_rows(0, 3)}, 2, batches_per_task=2, ratio=0.5)
    # Without old tasks a batch of one is fine.
    assert len(build_replay_dataset(task_rows(0, 3), None, batch_size=1, batches_per_task=2)) == 2


def test_other_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="old task 0 has no stored examples"):
        build_replay_dataset(task_rows(1, 8), {0: task_rows(0, 0)}, batch_size=4, batches_per_task=2)
    with pytest.raises(ValueError, match="fewer than the 2 new slots"):
        build_replay_dataset(task_rows(1, 1), {0: task_rows(0, 3)}, batch_size=4, batches_per_task=2)
    with pytest.raises(ValueError, match="already holds task 0"):
        build_replay_dataset(task_rows(0, 8), {0: task_rows(0, 3)}, 4, 2, new_task_index=0)
    with pytest.raises(ValueError, match="batches_per_task"):
        build_replay_dataset(task_rows(1, 8), {0: task_rows(0, 3)}, batch_size=4, batches_per_task=0)
    with pytest.raises(ValueError, match="share one set of columns"):
        build_replay_dataset(task_rows(1, 8), {0: task_rows(0, 3).remove_columns("value")}, 4, 2)
    with pytest.raises(ValueError, match="no training examples"):
        build_replay_dataset(task_rows(1, 0), {0: task_rows(0, 3)}, batch_size=4, batches_per_task=2)


# ----------------------------------------------------------------------------------------------
# Memory strategies
# ----------------------------------------------------------------------------------------------

@FAST
@given(st.integers(1, 60), st.integers(1, 20), st.integers(0, 1000))
def test_reservoir_memory_is_bounded_distinct_and_seeded(size, capacity, seed):
    memory = ReplayMemory("reservoir", capacity=capacity, seed=seed)
    kept = memory.add_task(3, task_rows(3, size))
    assert len(kept) == min(size, capacity) == len(memory)
    assert len(set(kept["uid"])) == len(kept)
    assert set(kept["uid"]) <= set(task_rows(3, size)["uid"])
    again = ReplayMemory("reservoir", capacity=capacity, seed=seed)
    again.add_task(0, task_rows(9, 1))  # an earlier task must not change task 3's draw
    assert again.add_task(3, task_rows(3, size))["uid"] == kept["uid"]


def test_reservoir_sampling_is_uniform():
    rng = np.random.default_rng(0)
    inclusion = np.zeros(10)
    trials = 4000
    for _ in range(trials):
        inclusion[reservoir_sample(10, 3, rng)] += 1
    # Each item is kept with probability 3/10; standard error ~0.0072.
    assert np.all(np.abs(inclusion / trials - 0.3) < 0.04), inclusion / trials


def _blobs(rng, centres, per_blob, spread=0.05):
    return np.concatenate([c + spread * rng.standard_normal((per_blob, len(c))) for c in centres])


@FAST
@given(st.integers(1, 40), st.integers(1, 12), st.integers(1, 6), st.integers(0, 100))
def test_kmeans_picks_distinct_exemplars_deterministically(size, capacity, dim, seed):
    vectors = np.random.default_rng(seed).standard_normal((size, dim))
    vectors[: size // 2] = vectors[0]  # many duplicates: centroids must still pick distinct rows
    first = kmeans_exemplars(vectors, capacity, np.random.default_rng(seed))
    second = kmeans_exemplars(vectors, capacity, np.random.default_rng(seed))
    assert np.array_equal(first, second)
    assert len(first) == min(size, capacity) == len(set(first.tolist()))
    assert first.min() >= 0 and first.max() < size


def test_kmeans_memory_takes_one_exemplar_per_cluster():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    vectors = _blobs(rng, centres, per_blob=20)
    memory = ReplayMemory("kmeans", capacity=3, seed=0)
    kept = memory.add_task(0, task_rows(0, 60), embeddings=torch.tensor(vectors))
    blobs = sorted(parse_uid(uid)[1] // 20 for uid in kept["uid"])
    assert blobs == [0, 1, 2]
    # Nearest to each centroid: the chosen rows are close to their blob centres.
    for position in memory.source_rows(0):
        assert np.linalg.norm(vectors[position] - centres[position // 20]) < 0.3
    again = ReplayMemory("kmeans", capacity=3, seed=0)
    assert again.add_task(0, task_rows(0, 60), embeddings=vectors)["uid"] == kept["uid"]


def test_capacity_per_group_column():
    rows = task_rows(0, 30).add_column("label", ["a"] * 20 + ["b"] * 10)
    memory = ReplayMemory("kmeans", capacity=4, group_column="label")
    kept = memory.add_task(0, rows, embeddings=np.random.default_rng(0).standard_normal((30, 3)))
    assert collections.Counter(kept["label"]) == {"a": 4, "b": 4}
    reservoir = ReplayMemory("reservoir", capacity=15, group_column="label")
    assert collections.Counter(reservoir.add_task(0, rows)["label"]) == {"a": 15, "b": 10}


def test_memory_errors_name_the_problem():
    with pytest.raises(ValueError, match="strategy"):
        ReplayMemory("fifo")
    with pytest.raises(ValueError, match="needs capacity"):
        ReplayMemory("reservoir")
    with pytest.raises(ValueError, match="contradicts"):
        ReplayMemory("all", capacity=5)
    memory = ReplayMemory("kmeans", capacity=2)
    with pytest.raises(ValueError, match="needs embeddings"):
        memory.add_task(0, task_rows(0, 5))
    with pytest.raises(ValueError, match="embeddings have 4 rows"):
        memory.add_task(0, task_rows(0, 5), embeddings=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="task 1 has no examples"):
        memory.add_task(1, task_rows(1, 0), embeddings=np.zeros((0, 2)))
    memory.add_task(0, task_rows(0, 5), embeddings=np.eye(5))
    with pytest.raises(ValueError, match="already holds task 0"):
        memory.add_task(0, task_rows(0, 5), embeddings=np.eye(5))
    with pytest.raises(KeyError, match="holds no task 7"):
        memory.examples(7)
    with pytest.raises(ValueError, match="group_column 'label'"):
        ReplayMemory("reservoir", capacity=2, group_column="label").add_task(0, task_rows(0, 5))


# ----------------------------------------------------------------------------------------------
# Persistence
# ----------------------------------------------------------------------------------------------

def test_save_load_round_trip_keeps_rows_types_and_replay(tmp_path):
    features = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["neg", "pos"]),
        }
    )
    rows = datasets.Dataset.from_dict(
        {
            "input_ids": [[1, 2, 3], [4], [], [5, 6]],
            "text": ["plain", "ünïcödé ✓", 'quote " and \n newline', ""],
            "label": [0, 1, 1, 0],
        },
        features=features,
    )
    memory = ReplayMemory("reservoir", capacity=3, seed=11)
    memory.add_task(0, rows)
    memory.add_task(2, rows.select([1, 3]))
    memory.save(tmp_path / "memory")
    files = sorted(os.listdir(tmp_path / "memory"))
    assert files == ["replay_memory.json", "task_0.jsonl", "task_2.jsonl"]  # JSON only, no temp files
    json.loads((tmp_path / "memory" / "replay_memory.json").read_text())

    loaded = ReplayMemory.load(tmp_path / "memory")
    assert loaded.tasks == [0, 2] and len(loaded) == len(memory) == 5
    assert (loaded.strategy, loaded.capacity, loaded.seed) == ("reservoir", 3, 11)
    for task in memory.tasks:
        assert loaded.examples(task).features == features
        assert loaded.examples(task).to_list() == memory.examples(task).to_list()
        assert loaded.source_rows(task) == memory.source_rows(task)
    new = rows.select([0, 1])
    assert (
        build_replay_dataset(new, loaded, 2, 5, seed=1, new_task_index=3).to_list()
        == build_replay_dataset(new, memory, 2, 5, seed=1, new_task_index=3).to_list()
    )


@FAST
@given(
    st.dictionaries(
        st.integers(0, 20),
        st.lists(st.tuples(st.text(max_size=12), st.integers(-(2**40), 2**40)), min_size=1, max_size=6),
        max_size=4,
    )
)
def test_save_load_round_trip_property(tmp_path_factory, contents):
    directory = tmp_path_factory.mktemp("memory")
    memory = ReplayMemory("all")
    for task, pairs in contents.items():
        memory.add_task(task, [{"text": text, "number": number} for text, number in pairs])
    memory.save(directory)
    loaded = ReplayMemory.load(directory)
    assert loaded.tasks == memory.tasks
    for task in memory.tasks:
        assert loaded.examples(task).to_list() == memory.examples(task).to_list()


def test_unserialisable_rows_and_missing_manifest(tmp_path):
    memory = ReplayMemory("all")
    memory.add_task(0, datasets.Dataset.from_dict({"blob": [b"\x00\x01"]}))
    with pytest.raises(TypeError, match="row 0 of task 0 is not JSON-serialisable"):
        memory.save(tmp_path / "memory")
    with pytest.raises(FileNotFoundError, match="replay_memory.json"):
        ReplayMemory.load(tmp_path / "nowhere")


# ------------------------------------------------------------------------------ the memory budget
def rows_of(task: int, count: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"id": [f"{task}-{k}" for k in range(count)], "task_id": [task] * count})


def test_priority_order_is_the_permutation_dataset_shuffle_draws():
    from hf_conpet.memory import priority_order

    rows = rows_of(3, 57)
    assert rows.shuffle(seed=3)["id"] == rows.select(priority_order(57, 3))["id"]


@pytest.mark.parametrize("strategy, capacity", [("all", None), ("reservoir", 30)])
def test_the_budget_is_never_exceeded_and_tasks_only_shrink_to_subsets(strategy, capacity, tmp_path):
    memory = ReplayMemory(strategy, capacity=capacity, budget=100, min_per_task=5)
    held: dict[int, set] = {}
    for task in range(20):
        memory.add_task(task, rows_of(task, 40 + task))
        assert len(memory) <= 100
        quota = memory.per_task_quota()
        assert 0.9 * (100 // (task + 1)) <= quota <= 100 // (task + 1)  # the fair share, on the ladder
        for old in memory.tasks:
            ids = set(memory.examples(old)["id"])
            assert len(ids) == min(quota, capacity or 10 ** 9, 40 + old) >= 5
            assert old not in held or ids <= held[old]  # a shrink keeps a subset of what was kept
            assert [f"{old}-{p}" for p in memory.source_rows(old)] == memory.examples(old)["id"]
            held[old] = ids
    # the 21st task would leave 4 rows per task, under the minimum: refused, nothing changed
    before = {task: memory.examples(task)["id"] for task in memory.tasks}
    with pytest.raises(ValueError, match="cannot keep 5 per task for 21 tasks"):
        memory.add_task(20, rows_of(20, 40))
    assert {task: memory.examples(task)["id"] for task in memory.tasks} == before
    memory.save(tmp_path / "memory")
    loaded = ReplayMemory.load(tmp_path / "memory")
    assert loaded.budget == 100 and loaded.min_per_task == 5
    assert {t: loaded.examples(t)["id"] for t in loaded.tasks} == before
    assert all(loaded.in_priority_order(t)["id"] == memory.in_priority_order(t)["id"] for t in loaded.tasks)


def test_a_saved_memory_over_its_budget_is_refused(tmp_path):
    memory = ReplayMemory("all", budget=60)
    for task in range(2):
        memory.add_task(task, rows_of(task, 40))
    memory.save(tmp_path / "memory")
    manifest_path = tmp_path / "memory" / "replay_memory.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["budget"] = 40
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="more than the budget's 20 rows per task"):
        ReplayMemory.load(tmp_path / "memory")


@pytest.mark.parametrize("budget, min_per_task, expected", [
    (0, 1, "budget must be a positive integer"), (10, 0, "min_per_task must be a positive integer"),
    (3, 4, "more than the whole budget"),
])
def test_bad_budgets_are_refused(budget, min_per_task, expected):
    with pytest.raises(ValueError, match=expected):
        ReplayMemory("all", budget=budget, min_per_task=min_per_task)


def test_conpet_selector_caches_only_the_rows_the_budgeted_memory_keeps():
    """The selector's cached features follow the memory's budget: the same rows (both keep a prefix
    of each task's priority order), so its cache stops growing with the memory."""
    from hf_conpet.selectors import ConPetSelector, TaskEndContext

    table = torch.randn(20, 64, 8, generator=torch.Generator().manual_seed(0))  # [task, row, d] features

    def features(rows):
        return torch.stack([table[int(i.split("-")[0]), int(i.split("-")[1])] for i in rows["id"]])

    selector = ConPetSelector(hidden_size=8, head_dim=8, feature_source="embeddings", max_cached_examples=16)
    memory = ReplayMemory("all", budget=120)
    for task in range(12):
        selector.add_task()
        rows = rows_of(task, 64)
        selector.end_task(TaskEndContext(task_index=task, train=rows, validation=rows.select(range(4)), memory=memory,
                                         features=features, batch_size=8, steps=3, replay_ratio=1.0, seed=task))
        for old in memory.tasks:  # what the selector trained on: no more than the memory keeps, the same rows
            cached = selector._subset_cache[old]["id"]
            assert len(cached) == min(16, memory.num_examples(old))
            assert set(cached) <= set(memory.examples(old)["id"])
            assert torch.equal(selector._feature_cache[old], features(selector._subset_cache[old]))
        assert sum(len(selector._feature_cache[t]) for t in memory.tasks) <= 120
        memory.add_task(task, rows)
    assert [len(selector._feature_cache[t]) for t in range(11)] == [10] * 11  # 120 // 11 = 10, on the ladder
