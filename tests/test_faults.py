"""Fault injection: kill -9 at every filesystem step of a save and at many points of a run, then
check that nothing was lost or half-written; hostile saved systems and checkpoints; odd names;
permissions; byte-identical saves.

Children are forked from a forkserver that has imported torch and transformers once, and kill
themselves with SIGKILL just before their k-th filesystem operation (tests/fault_children.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import stat
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, ConPetModelForSequenceClassification
from hf_conpet._io import atomic_directory, atomic_write, current_umask, recover_directory
from hf_conpet.base_models import IncompatibleBaseModelError
from hf_conpet.memory import ReplayMemory
from hf_conpet.model import RoutingError
from hf_conpet.saved_layout import MANIFEST_NAME

import fault_children
from tiny_models import tiny_bert, tiny_llama

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and forkserver are POSIX")


@pytest.fixture(scope="module")
def forkserver():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "datasets", "hf_conpet", "fault_children"])
    return context


def run_child(context, target, *args, timeout=120) -> int:
    process = context.Process(target=target, args=args)
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise AssertionError(f"{target.__name__}{args} hung")
    return process.exitcode


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# ------------------------------------------------------------------------------ kill during a save
def test_a_save_killed_at_any_step_leaves_the_old_or_the_new_system(forkserver, tmp_path):
    references = {}
    for tasks in (1, 2):
        fault_children.build_system(tasks).save_pretrained(tmp_path / f"ref_{tasks}")
        references[tasks] = tree_bytes(tmp_path / f"ref_{tasks}")
    assert references[1] != references[2]

    outcomes, kill_at, total = {"old": 0, "new": 0}, 1, None
    while total is None:
        work = tmp_path / f"kill_{kill_at}"
        work.mkdir()
        status = run_child(forkserver, fault_children.save_killed, str(work / "system"), kill_at, str(work / "events"))
        if status == 0:
            total = int((work / "events").read_text())
            assert total == kill_at - 1
        else:
            assert status == -9, f"child exited {status} at event {kill_at}"
        # the next reader finishes or undoes the swap; a complete old or new system is then there
        loaded = ConPetModelForCausalLM.from_pretrained(work / "system", base_model=tiny_llama(seed=0))
        found = tree_bytes(work / "system")
        assert found in (references[1], references[2]), f"a kill at event {kill_at} left a mixed or partial system"
        if status != 0:
            outcomes["new" if found == references[2] else "old"] += 1
        assert loaded.task_names == (["task_0", "task_1"] if found == references[2] else ["task_0"])
        assert leftovers(work, "system") == [], f"event {kill_at}: leftovers {leftovers(work, 'system')}"
        kill_at += 1
    assert total >= 10, f"only {total} kill points in a save"
    assert outcomes["old"] >= 1 and outcomes["new"] >= 1
    print(f"save: {total} kill points; the old system was found after {outcomes['old']}, the new after {outcomes['new']}")


# ------------------------------------------------------------------------------ kill during a run
def test_a_run_killed_anywhere_resumes_into_the_uninterrupted_run_bit_for_bit(forkserver, tmp_path):
    reference = tmp_path / "reference"
    started = time.perf_counter()
    assert run_child(forkserver, fault_children.continual_run, str(reference), "conpet", None, None,
                     str(tmp_path / "events")) == 0
    duration = time.perf_counter() - started
    total = int((tmp_path / "events").read_text())
    expected = tree_bytes(reference / "checkpoint")
    chooser = random.Random(15)
    points = [("event", k) for k in sorted(chooser.sample(range(1, total + 1), 8))]
    points += [("time", round(chooser.uniform(0.2, duration), 2)) for _ in range(4)]
    killed = 0
    for kind, point in points:
        output = tmp_path / f"{kind}_{point}"
        status = run_child(forkserver, fault_children.continual_run, str(output), "conpet",
                           point if kind == "event" else None, point if kind == "time" else None, None)
        killed += status == -9
        assert status in (0, -9), f"{kind} {point}: exit {status}"
        # resume in a fresh process, as a user would after the crash
        assert run_child(forkserver, fault_children.continual_run, str(output), "conpet", None, None, None) == 0
        found = tree_bytes(output / "checkpoint")
        different = sorted(set(found) ^ set(expected)) or [k for k in expected if found[k] != expected[k]]
        assert not different, f"kill at {kind} {point}: resumed run differs in {different[:5]}"
        assert leftovers(output, "checkpoint") == []
    assert killed >= 10, f"only {killed} of {len(points)} kills landed inside the run"
    print(f"run: {total} filesystem events; {killed} of {len(points)} kills landed, every resume bit-identical")


# ------------------------------------------------------------------------------ crash-safe swaps
def test_recovery_restores_the_old_tree_after_a_kill_between_the_renames(tmp_path):
    destination = tmp_path / "system"
    destination.mkdir()
    (destination / "a").write_text("old")
    os.replace(destination, tmp_path / ".system.old")  # the first rename happened, the second did not
    (tmp_path / ".system.tmp-999999999-x").mkdir()  # a dead writer's staging tree
    recover_directory(destination)
    assert (destination / "a").read_text() == "old" and leftovers(tmp_path, "system") == []


def test_a_finished_swap_drops_the_old_tree_and_legacy_backups_are_restored(tmp_path):
    destination = tmp_path / "system"
    with atomic_directory(destination) as staging:
        (staging / "a").write_text("new")
    (tmp_path / ".system.old").mkdir()  # killed after the second rename, before the delete
    recover_directory(destination)
    assert leftovers(tmp_path, "system") == []
    os.replace(destination, tmp_path / ".system.old-999999999")  # hf_conpet <= 0.3's backup name
    recover_directory(destination)
    assert (destination / "a").read_text() == "new" and leftovers(tmp_path, "system") == []


def test_a_failing_block_leaves_the_destination_as_it_was(tmp_path):
    destination = tmp_path / "system"
    with atomic_directory(destination) as staging:
        (staging / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(destination) as staging:
            (staging / "a").write_text("half")
            raise RuntimeError("boom")
    assert (destination / "a").read_text() == "old" and leftovers(tmp_path, "system") == []


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_an_exception_between_the_renames_puts_the_old_tree_back_at_once(interruption, tmp_path, monkeypatch):
    import hf_conpet._io as io_module

    destination = tmp_path / "system"
    with atomic_directory(destination) as staging:
        (staging / "a").write_text("old")
    real_replace, calls = os.replace, []

    def replace_then_stop(source, target):
        calls.append(Path(target).name)
        if len(calls) == 2:  # the old tree is at .system.old, the new one not yet renamed in
            raise interruption("stopped between the renames")
        return real_replace(source, target)

    monkeypatch.setattr(io_module.os, "replace", replace_then_stop)
    with pytest.raises(interruption):
        with atomic_directory(destination) as staging:
            (staging / "a").write_text("new")
    monkeypatch.setattr(io_module.os, "replace", real_replace)
    assert calls[:2] == [".system.old", "system"]
    assert (destination / "a").read_text() == "old" and leftovers(tmp_path, "system") == []


def test_the_cli_finds_a_system_whose_swap_was_killed_between_the_renames(tmp_path):
    from hf_conpet.cli.common import SYSTEM_DIR
    from hf_conpet.cli.inspect import _system_dir

    system = tmp_path / "run" / SYSTEM_DIR
    with atomic_directory(system) as staging:
        (staging / MANIFEST_NAME).write_text("{}")
    os.replace(system, system.with_name(f".{SYSTEM_DIR}.old"))
    assert _system_dir(str(tmp_path / "run")) == system and (system / MANIFEST_NAME).is_file()


def test_stale_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    (tmp_path / ".x.json.tmp-999999999-abc").write_text("half")
    live = tmp_path / f".x.json.tmp-{os.getppid()}-abc"
    live.write_text("someone is writing")
    atomic_write(tmp_path / "x.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.json", live.name])


def test_a_temp_locked_by_its_writer_is_kept_whatever_its_pid_says(tmp_path):
    """A writer in another container (another pid namespace) has a pid that means nothing here;
    its flock on the temp does, and the kernel drops it when the writer dies."""
    import fcntl

    other = tmp_path / ".x.json.tmp-999999999-abc"  # no such pid on this machine
    other.write_text("being written elsewhere")
    fd = os.open(other, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    atomic_write(tmp_path / "x.json", "{}")
    assert other.exists()
    os.close(fd)  # the writer dies: its lock goes with it
    atomic_write(tmp_path / "x.json", "{}")
    assert not other.exists()


# ------------------------------------------------------------------------------ permissions
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_follow_the_umask(umask, tmp_path):
    from hf_conpet.checkpoint import write_checkpoint
    from hf_conpet.model_card import write_model_card

    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        model = fault_children.build_system(2)
        model.save_pretrained(tmp_path / "system", metrics={"task_names": ["task_0", "task_1"],
                                                            "matrix": [[0.5, None], [0.4, 0.6]]})
        write_model_card(tmp_path / "system")
        memory = ReplayMemory("all")
        memory.add_task(0, [{"input": "a", "output": "b"}])
        write_checkpoint(tmp_path / "checkpoint", model, memory, {}, {"method": "conpet", "stream": [], "finished": []})
        atomic_write(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(previous)
    paths = [tmp_path / "system", tmp_path / "checkpoint", tmp_path / "metrics.json"]
    paths += [p for root in paths[:2] for p in root.rglob("*")]
    assert (tmp_path / "system" / "accuracy_matrix.png").is_file() and (tmp_path / "system" / "README.md").is_file()
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == wanted, f"{path}: {oct(mode)} under umask {oct(umask)}"


# ------------------------------------------------------------------------------ reproducible files
def test_two_saves_of_one_system_are_byte_identical(tmp_path):
    model = fault_children.build_system(2)
    model.save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    config = json.loads((tmp_path / "a" / "tasks" / "task_0" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["q_proj", "v_proj"]


# ------------------------------------------------------------------------------ hostile systems
@pytest.fixture()
def saved(tmp_path):
    fault_children.build_system(2).save_pretrained(tmp_path / "system")
    return tmp_path / "system"


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_tensors(path: Path, change) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


MANIFEST, SELECTOR = "conpet_config.json", "selector/config.json"
ADAPTER = "tasks/task_0/adapter_model.safetensors"
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


HOSTILE = {
    "manifest not json": (MANIFEST, "text", "{not json", "conpet_config.json is not valid JSON"),
    "manifest a list": (MANIFEST, "json", lambda d: d.clear() or None, None),
    "tasks an object": (MANIFEST, "json", _set("tasks", {"a": 1}), "field 'tasks' must be a list"),
    "task a list": (MANIFEST, "json", _set("tasks", 0, ["task_0"]), "field 'tasks[0]' must be an object"),
    "task name with newline": (MANIFEST, "json", _set("tasks", 0, "name", "task_0\n"), "field 'tasks[0].name'"),
    "task name a path": (MANIFEST, "json", _set("tasks", 0, "name", "../../etc"), "field 'tasks[0].name'"),
    "task listed twice": (MANIFEST, "json", _set("tasks", 1, "name", "task_0"), "listed twice"),
    "labels an object": (MANIFEST, "json", _set("tasks", 0, "labels", {"yes": 1}), "field 'tasks[0].labels'"),
    "format version a string": (MANIFEST, "json", _set("format_version", "1"), "format_version '1'"),
    "target shapes a list": (MANIFEST, "json", _set("base_model", "target_shapes", [1, 2]), "base_model.target_shapes"),
    "rank a string": (MANIFEST, "json", _set("config", "r", "4"), "field 'config': Invalid ConPetConfig: r must be a int"),
    "unknown config key": (MANIFEST, "json", _set("config", "evil", 1), "Unknown ConPetConfig keys: ['evil']"),
    "selector of another kind": (MANIFEST, "json", _set("selector", "magic"), "field 'selector'"),
    "selector rows for 5 tasks": (SELECTOR, "json", _set("num_tasks", 5), "field 'num_tasks' must be 2"),
    "selector wider than the base": (SELECTOR, "json", _set("hidden_size", 4096), "field 'hidden_size' must be 32"),
    "selector asks for gigabytes": (SELECTOR, "json", _set("head_dim", 10 ** 9), "field 'head_dim' must be an integer of at most"),
    "selector tensors of another size": (SELECTOR, "json", _set("head_dim", 64), "does not fit"),
    "selector kind mismatch": (SELECTOR, "json", _set("kind", "analytic"), "field 'kind'"),
    "selector config missing": (SELECTOR, "delete", None, "selector/config.json is missing"),
    "NaN in an adapter": (ADAPTER, "tensors", lambda t: t[Q_A].fill_(float("nan")), f"tensor '{Q_A}' holds NaN or inf"),
    "inf in the selector": ("selector/model.safetensors", "tensors", lambda t: t["task_bias"].fill_(float("inf")),
                            "tensor 'task_bias' holds NaN or inf"),
    "adapter lacks a layer": (ADAPTER, "tensors", lambda t: t.pop(Q_A), f"lacks {Q_A}"),
    "adapter of another rank": (ADAPTER, "tensors", lambda t: t.__setitem__(Q_A, torch.zeros(8, 32)), "has shape [8, 32]"),
    "adapter not safetensors": (ADAPTER, "text", "garbage", "not a readable safetensors file"),
    "selector weights not safetensors": ("selector/model.safetensors", "text", "garbage", "not a readable safetensors file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_saved_system_is_refused_by_file_and_field_and_the_base_is_left_unwrapped(case, saved):
    relative, kind, change, expected = HOSTILE[case]
    path = saved / relative
    if kind == "text":
        path.write_text(change)
    elif kind == "json":
        if case == "manifest a list":
            path.write_text("[]")
            expected = "conpet_config.json: field '(top level)' must be a JSON object"
        else:
            edit_json(path, change)
    elif kind == "tensors":
        edit_tensors(path, change)
    else:
        path.unlink()
    before = tree_bytes(saved)
    base = tiny_llama(seed=0)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    flags = {k: p.requires_grad for k, p in base.named_parameters()}
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        ConPetModelForCausalLM.from_pretrained(saved, base_model=base)
    assert expected in str(raised.value), str(raised.value)
    named = str(raised.value)
    assert Path(relative).name in named or "conpet_config.json" in named, named
    # the caller's base is plain again, unchanged; nothing was written
    assert type(base.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert {k: p.requires_grad for k, p in base.named_parameters()} == flags
    assert base.state_dict().keys() == base_state.keys()
    assert all(torch.equal(base.state_dict()[k], v) for k, v in base_state.items())
    assert tree_bytes(saved) == before and leftovers(saved.parent, "system") == []


def test_a_base_of_the_same_shapes_but_other_weights_is_refused_with_the_override_named(saved):
    base = tiny_llama(seed=1)
    with pytest.raises(IncompatibleBaseModelError, match="strict_base_weights=False"):
        ConPetModelForCausalLM.from_pretrained(saved, base_model=base)
    assert type(base.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    model = ConPetModelForCausalLM.from_pretrained(saved, base_model=base, strict_base_weights=False)
    assert model.task_names == ["task_0", "task_1"]


def test_the_same_weights_in_another_dtype_are_accepted(saved):
    model = ConPetModelForCausalLM.from_pretrained(saved, base_model=tiny_llama(seed=0).to(torch.bfloat16))
    assert model.task_names == ["task_0", "task_1"]


def hostile_checkpoint(tmp_path) -> Path:
    model = fault_children.build_system(1)
    memory = ReplayMemory("all")
    memory.add_task(0, [{"input": "a", "output": "b", "task_id": 0}])
    from hf_conpet.checkpoint import write_checkpoint

    return write_checkpoint(tmp_path / "run" / "checkpoint", model, memory, {"task_names": ["task_0"], "matrix": [[0.5]]},
                            {"method": "conpet", "stream": ["task_0"], "finished": ["task_0"]})


@pytest.mark.parametrize("file_name", ["../outside.jsonl", "/etc/passwd", "link.jsonl"])
def test_a_replay_file_outside_the_checkpoint_is_refused(file_name, tmp_path):
    checkpoint = hostile_checkpoint(tmp_path)
    (tmp_path / "run" / "outside.jsonl").write_text('{"input": "x", "output": "y", "task_id": 0}\n')
    (checkpoint / "replay" / "link.jsonl").symlink_to(tmp_path / "run" / "outside.jsonl")
    edit_json(checkpoint / "replay" / "replay_memory.json", _set("tasks", 0, "file", file_name))
    with pytest.raises(ValueError, match=r"replay_memory.json: field 'tasks\[0\].file'"):
        ReplayMemory.load(checkpoint / "replay")


@pytest.mark.parametrize("change, expected", [
    (_set("finished", "task_0"), "field 'finished' must be a list"),
    (_set("finished", ["other"]), "is not the start of 'stream'"),
    (_set("settings", [1]), "field 'settings' must be an object"),
])
def test_a_malformed_progress_record_is_refused_by_field(change, expected, tmp_path):
    from hf_conpet.checkpoint import read_progress

    checkpoint = hostile_checkpoint(tmp_path)
    edit_json(checkpoint / "progress.json", change)
    with pytest.raises(ValueError, match=expected):
        read_progress(checkpoint)


@pytest.mark.parametrize("damage, expected", [
    (lambda c: (c / "rng_state.safetensors").write_text("garbage"), "not a readable safetensors file"),
    (lambda c: save_file({**load_file(c / "rng_state.safetensors"), "torch_cuda_x": torch.zeros(3, dtype=torch.uint8)},
                         c / "rng_state.safetensors"), "unknown key 'torch_cuda_x'"),
    (lambda c: save_file({"torch_cpu": torch.zeros(3, dtype=torch.uint8)}, c / "rng_state.safetensors"), "not a generator state"),
])
def test_a_damaged_generator_state_is_refused_by_file(damage, expected, tmp_path):
    from hf_conpet.checkpoint import restore_generators

    checkpoint = hostile_checkpoint(tmp_path)
    damage(checkpoint)
    random.seed(5)
    state, python_state = torch.get_rng_state(), random.getstate()
    with pytest.raises(ValueError, match=expected) as raised:
        restore_generators(checkpoint)
    assert "rng_state" in str(raised.value) and torch.equal(torch.get_rng_state(), state)
    assert random.getstate() == python_state  # nothing half-restored


def test_the_cli_refuses_a_base_with_only_pickled_weights(tmp_path, capfd):
    from hf_conpet import cli

    folder = tmp_path / "pickled"
    tiny_llama().save_pretrained(folder)
    for weights in folder.glob("*.safetensors"):  # keep the same weights only as a pickled .bin
        torch.save({k: v for k, v in load_file(weights).items()}, folder / "pytorch_model.bin")
        weights.unlink()
    capfd.readouterr()
    assert cli.main(["run", "--model", str(folder), "--output", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err
    assert "never loads pickled weights" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ names, half-added tasks, inputs
@pytest.mark.parametrize("name", ["x\n", "a/b", "..", "", "1abc", "a" * 65, "ta sk"])
def test_task_names_must_match_the_whole_pattern(name):
    model = ConPetModelForCausalLM(tiny_llama(), ConPetConfig(selector="none"))
    with pytest.raises(ValueError, match="Invalid task name"):
        model.add_task(name)
    assert model.num_tasks == 0


def test_a_failed_add_task_leaves_the_model_exactly_as_before():
    model = ConPetModelForSequenceClassification(tiny_bert(), ConPetConfig(selector="none"))
    model.add_task("first", labels=["a", "b"])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = sorted(model.trainable_parameters())
    for bad in ({"labels": None}, {"labels": ["a", "a"]}, {"labels": "ab"}, {"labels": ["a"], "instruction": 3}):
        with pytest.raises(ValueError):
            model.add_task("second", **bad)
    assert model.task_names == ["first"] and sorted(model.trainable_parameters()) == trainable
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert list(model.peft_config) == ["first"] and model.head.num_labels == 2


def test_empty_prompts_and_non_finite_routing_weights_get_clear_errors():
    model = fault_children.build_system(2)
    empty = torch.zeros(1, 0, dtype=torch.long)
    with pytest.raises(ValueError, match="Empty prompt"):
        model.generate(input_ids=empty, task_ids=[0], max_new_tokens=2)
    with pytest.raises(ValueError, match="empty prompt"):
        model(input_ids=empty, task_ids=[0])
    with pytest.raises(ValueError, match=r"Empty prompt: example\(s\) \[1\]"):
        model.route({"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1], [0, 0, 0]])})
    with pytest.raises(RoutingError, match="NaN or inf"):
        model(input_ids=torch.ones(1, 3, dtype=torch.long), routing_weights=torch.tensor([[float("nan"), 1.0]]))


def test_a_base_the_system_cannot_wrap_is_left_untouched():
    base = tiny_llama(seed=0)
    flags = {k: p.requires_grad for k, p in base.named_parameters()}
    with pytest.raises(ValueError):
        ConPetModelForCausalLM(base, ConPetConfig(selector="none", target_modules=["no_such_proj"]))
    assert {k: p.requires_grad for k, p in base.named_parameters()} == flags and all(flags.values())


def test_a_class_label_column_maps_by_its_names_whatever_order_labels_are_given_in(tmp_path):
    import datasets

    from hf_conpet.data.loading import DatasetSpecError, tasks_from_hub

    features = datasets.Features({"input": datasets.Value("string"), "output": datasets.ClassLabel(names=["negative", "positive"])})
    for split in ("train", "test"):
        datasets.Dataset.from_dict({"input": ["bad", "good"] * 4, "output": [0, 1] * 4},
                                   features=features).to_parquet(str(tmp_path / f"{split}.parquet"))
    files = {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}
    task = tasks_from_hub({"sst2": {"path": "parquet", "data_files": files, "labels": ["positive", "negative"]}},
                          validation_size=2)[0]
    assert [(row["input"], row["output"]) for row in task.test][:2] == [("bad", "negative"), ("good", "positive")]
    with pytest.raises(DatasetSpecError, match=r"ClassLabel names \['negative'\] are not among the labels"):
        tasks_from_hub({"sst2": {"path": "parquet", "data_files": files, "labels": ["positive", "neutral"]}})
