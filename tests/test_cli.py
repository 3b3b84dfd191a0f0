"""`hf-conpet` end to end: a tiny random Llama on two tiny tasks (seconds), and one slow run of the
real quickstart path (the embedded SmolLM2 and benchmark, reduced budget; `-m "not slow"` skips it).

Everything runs in-process through `cli.main(argv)`, which returns the exit status.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hf_conpet import ConPetModelForCausalLM, cli
from hf_conpet.callback import ContinualCallback
from hf_conpet.metrics import ContinualMetrics

from tiny_models import tiny_byte_tokenizer, tiny_llama_for

TASKS = {"alpha": (["yes", "no"], "Answer yes or no."), "beta": (["red", "blue"], "Name the colour.")}


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on shared cores two threads spin against each other (measured here: a tiny
    Llama step 20 ms on one thread, 0.26-1.2 s on two; SmolLM2 runs also finish faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random Llama and its byte tokenizer, saved like any local model folder."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = tiny_byte_tokenizer()
    tiny_llama_for(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Two tasks in the long_sequence layout: <task>/{train,test}.jsonl + meta.json."""
    root = tmp_path_factory.mktemp("tasks")
    for name, (labels, instruction) in TASKS.items():
        folder = root / name
        folder.mkdir()
        (folder / "meta.json").write_text(json.dumps({"labels": labels, "instruction": instruction}))
        for split, count in (("train", 40), ("test", 4)):
            lines = [json.dumps({"id": f"{name}-{split}-{k}", "input": f"{name} item {k}", "output": labels[k % 2]})
                     for k in range(count)]
            (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def run_args(model, data, output, *extra):
    return ["run", "--model", str(model), "--data-dir", str(data), "--output", str(output),
            "--max-steps-per-task", "2", "--batch-size", "4", "--max-length", "64", "--max-eval-examples", "4", *extra]


@pytest.fixture(scope="module")
def finished_run(one_thread, tiny_model, tiny_data, tmp_path_factory):
    """One complete run, shared by the tests that read its outputs; returns (output dir, stdout)."""
    import contextlib
    import io

    output = tmp_path_factory.mktemp("runs") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = cli.main(run_args(tiny_model, tiny_data, output))
    assert status == 0, stdout.getvalue()
    return output, stdout.getvalue()


def test_run_writes_a_system_metrics_card_plot_and_log(finished_run):
    from huggingface_hub import ModelCard
    from matplotlib.image import imread

    from hf_conpet.plots import plot_accuracy_matrix

    output, stdout = finished_run
    assert "[1/2] alpha" in stdout and "[2/2] beta" in stdout  # the task counter
    assert "AP" in stdout and "selector" in stdout  # the final table

    metrics = json.loads((output / "metrics.json").read_text())
    parsed = ContinualMetrics.from_dict(metrics)
    assert parsed.task_names == ["alpha", "beta"]
    assert [sum(v is not None for v in row) for row in parsed.matrix] == [1, 2]
    assert set(metrics["summary"]) >= {"AP", "F.Ra", "BWT", "FWT", "selector_accuracy"}
    assert metrics["run"]["method"] == "conpet" and metrics["run"]["tasks"] == ["alpha", "beta"]

    system = output / "model"
    card = ModelCard.load(system / "README.md")
    assert card.data.library_name == "hf-conpet"
    assert {result.metric_name for result in card.data.eval_results} >= {"AP", "Selector accuracy"}
    assert "accuracy_matrix.png" in card.text

    image = imread(system / "accuracy_matrix.png")
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
    # it is the plot of this run's matrix: drawing the matrix again gives the same pixels
    again = plot_accuracy_matrix(parsed.matrix, parsed.task_names, output.parent / "again.png",
                                 title="hf_conpet: accuracy after each task")
    assert np.array_equal(imread(again), image)

    log = (output / "run.log").read_text()
    assert "after alpha" in log and "after beta" in log
    assert (output / "checkpoint" / "progress.json").is_file()
    assert not list(output.glob(".*tmp*"))  # no staging leftovers

    loaded = ConPetModelForCausalLM.from_pretrained(system)  # the base model is found from the manifest
    assert loaded.task_names == ["alpha", "beta"] and loaded.selector is not None


def test_run_with_the_analytic_router(one_thread, tiny_model, tiny_data, tmp_path, capsys):
    """`--method conpet_analytic`: the closed-form router is trained, saved, described and routes."""
    from huggingface_hub import ModelCard

    output = tmp_path / "out"
    assert cli.main(run_args(tiny_model, tiny_data, output, "--method", "conpet_analytic")) == 0
    system = output / "model"
    assert json.loads((system / "selector" / "config.json").read_text())["kind"] == "analytic"
    assert json.loads((system / "conpet_config.json").read_text())["config"]["selector"] == "analytic"
    summary = json.loads((output / "metrics.json").read_text())["summary"]
    assert summary["selector_accuracy"] is not None
    card = ModelCard.load(system / "README.md")
    assert "analytic" in card.data.tags and "closed form" in card.text
    capsys.readouterr()
    assert cli.main(["route", str(output), "Answer yes or no.\nalpha item 3\nOutput: "]) == 0
    assert "tasks:" in capsys.readouterr().out


def test_run_static_conpet_with_ewc_and_a_kmeans_memory(one_thread, tiny_model, tiny_data, tmp_path, capsys):
    """`--method ewc_replay --memory kmeans --memory-capacity 5`: one shared module, its EWC state and a
    bounded exemplar memory in the checkpoint, and a card and config that say so."""
    from huggingface_hub import ModelCard

    output = tmp_path / "out"
    assert cli.main(run_args(tiny_model, tiny_data, output, "--method", "ewc_replay", "--memory", "kmeans",
                             "--memory-capacity", "5", "--regularizer-weight", "0.25")) == 0
    system = output / "model"
    config = json.loads((system / "conpet_config.json").read_text())["config"]
    assert (config["selector"], config["regularizer"], config["train_data"]) == ("none", "ewc", "replay")
    assert (config["memory"], config["memory_capacity"], config["regularizer_weight"]) == ("kmeans", 5, 0.25)
    checkpoint = output / "checkpoint"
    saved = json.loads((checkpoint / "regularizer" / "regularizer.json").read_text())
    assert saved["kind"] == "ewc" and saved["settings"]["lambda_"] == 0.25 and saved["state"]["num_consolidated_tasks"] == 2
    from hf_conpet.memory import ReplayMemory

    memory = ReplayMemory.load(checkpoint / "replay")
    assert memory.strategy == "kmeans" and [memory.num_examples(t) for t in memory.tasks] == [5, 5]
    card = ModelCard.load(system / "README.md")
    assert "Static ConPET" in card.text and "EWC" in card.text and "ConPET selector" not in card.text
    capsys.readouterr()
    assert cli.main(run_args(tiny_model, tiny_data, tmp_path / "bad", "--method", "ewc_replay", "--memory", "kmeans")) == 2
    assert "memory_capacity" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_eval_and_route_on_the_output(finished_run, capsys):
    output, _ = finished_run
    capsys.readouterr()
    assert cli.main(["eval", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "alpha" in printed and "beta" in printed and "selector accuracy:" in printed

    assert cli.main(["eval", str(output / "model"), "--tasks", "beta", "--routing", "oracle"]) == 0
    printed = capsys.readouterr().out
    assert "beta" in printed and "alpha " not in printed

    prompts = ["Answer yes or no.\\nalpha item 3\\nOutput: ", "Name the colour.\\nbeta item 1\\nOutput: "]
    assert cli.main(["route", str(output), *prompts]) == 0
    printed = capsys.readouterr().out
    assert printed.count("tasks:") == 2 and printed.count("answer:") == 2
    probabilities = [float(word) for line in printed.splitlines() if "tasks:" in line
                     for word in line.split()[2::2]]
    assert all(0.0 <= p <= 1.0 for p in probabilities) and len(probabilities) == 4


def test_run_on_superni_free_text_tasks_names_rouge_l_everywhere(one_thread, tiny_model, tmp_path, capsys):
    """`hf-conpet run --data-dir ../shared/data/superni --template superni`: free-text tasks train,
    are scored by ROUGE-L, and the table, metrics.json, manifest and card say so; eval re-scores them."""
    from pathlib import Path

    from huggingface_hub import ModelCard

    superni = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "superni"
    output = tmp_path / "out"
    assert cli.main(["run", "--model", str(tiny_model), "--data-dir", str(superni), "--tasks", "sent140,samsum",
                     "--template", "superni", "--output", str(output), "--max-steps-per-task", "2",
                     "--batch-size", "2", "--max-length", "768", "--max-eval-examples", "2",
                     "--max-train-examples", "8"]) == 0
    printed = capsys.readouterr().out
    assert "rougeL, 2/2 tasks trained" in printed
    metrics = ContinualMetrics.from_dict(json.loads((output / "metrics.json").read_text()))
    assert metrics.task_metrics == ["rougeL", "rougeL"]
    loaded = ConPetModelForCausalLM.from_pretrained(output / "model")
    assert [task.labels for task in loaded.tasks] == [None, None]
    assert loaded.tasks[0].metadata["prompt_template"].startswith("Definition: {instruction}")
    from hf_conpet.demo import _task_rows

    assert [row[2] for row in _task_rows(loaded)] == ["free text", "free text"]  # the Space's task table
    card = ModelCard.load(output / "model" / "README.md")
    assert "| 2 | `samsum` | free text | ROUGE-L |" in card.text
    assert cli.main(["eval", str(output), "--max-eval-examples", "2"]) == 0
    assert "rougeL" in capsys.readouterr().out


def test_an_answer_longer_than_max_length_is_refused_before_anything_is_written(one_thread, tiny_model, tmp_path, capfd):
    """samsum's summaries take over 128 byte tokens: one line naming the task, no output directory
    (not an error at whichever training batch first holds such an answer)."""
    from pathlib import Path

    superni = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "superni"
    output = tmp_path / "out"
    capfd.readouterr()
    assert cli.main(["run", "--model", str(tiny_model), "--data-dir", str(superni), "--tasks", "sent140,samsum",
                     "--template", "superni", "--output", str(output), "--max-length", "128"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "--max-length 128 is too short: task 'samsum': example 'samsum-train-" in err, err
    assert "needs at least" in err and not output.exists()


def test_resume_after_a_killed_run_trains_only_the_unfinished_task(one_thread, tiny_model, tiny_data, tmp_path, monkeypatch, capsys):
    output = tmp_path / "out"
    trained = []
    original = ContinualCallback.train_dataset

    def killed_at_beta(self, task):
        if task.name == "beta":
            raise KeyboardInterrupt  # the run dies once alpha is finished and checkpointed
        trained.append(task.name)
        return original(self, task)

    monkeypatch.setattr(ContinualCallback, "train_dataset", killed_at_beta)
    assert cli.main(run_args(tiny_model, tiny_data, output)) == 130
    assert "--resume" in capsys.readouterr().err
    assert trained == ["alpha"]
    assert not (output / "model").exists() and not (output / "metrics.json").exists()  # nothing half-written
    progress = json.loads((output / "checkpoint" / "progress.json").read_text())
    assert progress["finished"] == ["alpha"]
    alpha_before = load_file(output / "checkpoint" / "tasks" / "alpha" / "adapter_model.safetensors")

    # without --resume the run is refused and left as it is
    assert cli.main(run_args(tiny_model, tiny_data, output)) == 2
    assert "--resume" in capsys.readouterr().err

    def recording(self, task):
        trained.append(task.name)
        return original(self, task)

    trained.clear()
    monkeypatch.setattr(ContinualCallback, "train_dataset", recording)
    assert cli.main(["run", "--output", str(output), "--resume"]) == 0  # the recorded settings are reused
    assert trained == ["beta"]
    assert "not retrained" in capsys.readouterr().out
    alpha_after = load_file(output / "model" / "tasks" / "alpha" / "adapter_model.safetensors")
    assert alpha_after.keys() == alpha_before.keys()
    assert all(torch.equal(alpha_after[key], alpha_before[key]) for key in alpha_before)
    metrics = ContinualMetrics.from_dict(json.loads((output / "metrics.json").read_text()))
    assert [sum(v is not None for v in row) for row in metrics.matrix] == [1, 2]


def test_resume_with_a_changed_setting_is_refused_up_front_and_plain_resume_still_works(
        one_thread, tiny_model, tiny_data, tmp_path, monkeypatch, capfd):
    output = tmp_path / "out"
    original = ContinualCallback.train_dataset

    def killed_at_beta(self, task):
        if task.name == "beta":
            raise KeyboardInterrupt
        return original(self, task)

    monkeypatch.setattr(ContinualCallback, "train_dataset", killed_at_beta)
    assert cli.main(run_args(tiny_model, tiny_data, output)) == 130
    monkeypatch.setattr(ContinualCallback, "train_dataset", original)
    recorded = (output / "run_args.json").read_bytes()
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}
    capfd.readouterr()
    status = cli.main(["run", "--output", str(output), "--resume", "--max-steps-per-task", "10", "--seed", "3"])
    err = capfd.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "max_steps_per_task: recorded 2, now 10" in err and "seed: recorded 0, now 3" in err
    assert "--max-steps-per-task" in err and "--seed" in err
    assert (output / "run_args.json").read_bytes() == recorded
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()} == before
    # the same values as recorded are not a change; the plain --resume the error advises works
    assert cli.main(["run", "--output", str(output), "--resume", "--max-steps-per-task", "2"]) == 0


def test_the_memory_budget_bounds_what_the_run_keeps(one_thread, tiny_model, tiny_data, tmp_path):
    output = tmp_path / "out"
    assert cli.main(run_args(tiny_model, tiny_data, output, "--memory-budget", "30")) == 0
    assert json.loads((output / "run_args.json").read_text())["memory_budget"] == 30
    replay = json.loads((output / "checkpoint" / "replay" / "replay_memory.json").read_text())
    assert replay["budget"] == 30 and [task["num_examples"] for task in replay["tasks"]] == [14, 14]  # 30 // 2 on the ladder


def test_a_finished_multitask_run_is_not_resumed_with_more_tasks(one_thread, tiny_model, tiny_data, tmp_path, capfd):
    """Multitask trains its one module on every task at once: a longer --tasks would train nothing new."""
    output = tmp_path / "out"
    assert cli.main(run_args(tiny_model, tiny_data, output, "--method", "multitask", "--tasks", "alpha")) == 0
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}
    capfd.readouterr()
    assert cli.main(["run", "--output", str(output), "--resume", "--tasks", "alpha,beta"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "multitask trained on alpha at once" in err, err
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "change, expected",
    [
        (["--tasks", "alpha,gamma"], "unknown task 'gamma'"),
        (["--method", "magic"], "unknown method 'magic'"),
        (["--data-dir", "{tmp}/no-such-dir"], "does not exist"),
        (["--model", "{tmp}/empty-model"], "cannot load model"),
        (["--model", "{tmp}/no-such-model"], "cannot load model"),
        (["--max-steps-per-task", "0"], "expected a positive integer"),
        (["--memory-budget", "1"], "cannot keep one replay row per task for 2 tasks"),
        (["--targets", "no_such_proj"], "cannot put LoRA modules"),
    ],
)
def test_bad_arguments_give_one_line_and_write_nothing(change, expected, tiny_model, tiny_data, tmp_path, capfd):
    (tmp_path / "empty-model").mkdir()
    output = tmp_path / "out"
    argv = run_args(tiny_model, tiny_data, output)
    for flag, value in zip(change[::2], change[1::2]):
        value = value.format(tmp=tmp_path)
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    capfd.readouterr()
    status = cli.main(argv)
    err = capfd.readouterr().err
    assert status != 0
    assert err.count("\n") == 1 and err.startswith("hf-conpet: error:") and expected in err, err
    assert "Traceback" not in err
    assert not output.exists()


def test_a_run_is_readable_by_others_as_the_umask_says(finished_run):
    import os
    import stat

    from hf_conpet._io import current_umask

    output, _ = finished_run
    mask = current_umask()
    for path in [output, *output.rglob("*")]:
        wanted = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == wanted, f"{path}: {oct(stat.S_IMODE(path.stat().st_mode))}"
    assert os.access(output / "model" / "README.md", os.R_OK)


def test_an_existing_run_is_not_overwritten_without_resume(finished_run, tiny_model, tiny_data, capfd):
    output, _ = finished_run
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}
    capfd.readouterr()
    assert cli.main(run_args(tiny_model, tiny_data, output)) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err and "--resume" in err
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("argv, expected", [
    (["eval", "{tmp}"], "not a saved hf_conpet system"),
    (["eval", "{tmp}/missing"], "does not exist"),
    (["route", "{tmp}"], "the following arguments are required"),
    (["route", "{tmp}", "fine", "  "], "prompt 2 is empty"),
])
def test_eval_and_route_errors_are_one_line(argv, expected, tmp_path, capfd):
    capfd.readouterr()
    assert cli.main([part.format(tmp=tmp_path) for part in argv]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_eval_loads_the_base_the_manifest_records_with_its_revision(finished_run, monkeypatch, capsys):
    """eval/route find the base as `from_pretrained` does (id and revision from the manifest), so a
    system trained on the embedded GGUF conversion is served by it, not by another copy."""
    import hf_conpet.model as model_module

    output, _ = finished_run
    manifest = json.loads((output / "model" / "conpet_config.json").read_text())
    calls, real = [], model_module.load_base_model

    def spy(auto_class, base_id, revision, base_kwargs, **options):
        calls.append((base_id, revision))
        return real(auto_class, base_id, revision, base_kwargs, **options)

    monkeypatch.setattr(model_module, "load_base_model", spy)
    assert cli.main(["eval", str(output), "--max-eval-examples", "2"]) == 0
    assert calls == [(manifest["base_model"]["name_or_path"], manifest["base_model"].get("revision"))]


def test_eval_refuses_a_task_the_system_does_not_have(finished_run, capfd):
    output, _ = finished_run
    capfd.readouterr()
    assert cli.main(["eval", str(output), "--tasks", "gamma"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "unknown task 'gamma'" in err, err


# ---------------------------------------------------------------------------------- slow
def _default_model_installed() -> bool:
    import importlib.util

    from hf_conpet.default_model import DefaultModelUnavailable, find_default_gguf

    try:
        find_default_gguf()
    except DefaultModelUnavailable:
        return False
    return importlib.util.find_spec("gguf") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _default_model_installed(), reason="offline default model not installed (tests/run.sh installs it)")
def test_quickstart_path_on_the_embedded_model_and_benchmark(one_thread, tmp_path, capsys):
    """`hf-conpet run` with no --model / --data-dir, on a reduced budget: 2 tasks x 4 steps, 64 training
    examples per task (the selector featurises each task's examples), 8 test examples."""
    from huggingface_hub import ModelCard

    from hf_conpet.default_model import DEFAULT_BASE_MODEL, DEFAULT_TASKS

    output = tmp_path / "quickstart"
    tasks = list(DEFAULT_TASKS[:2])
    started = time.perf_counter()
    status = cli.main(["run", "--output", str(output), "--tasks", ",".join(tasks), "--max-steps-per-task", "4",
                       "--batch-size", "4", "--max-train-examples", "64", "--max-eval-examples", "8"])
    printed = capsys.readouterr()
    assert status == 0, printed.err[-2000:]
    seconds = time.perf_counter() - started
    print(f"quickstart path, 2 tasks x 4 steps: {seconds:.0f} s")

    metrics = ContinualMetrics.from_dict(json.loads((output / "metrics.json").read_text()))
    assert metrics.task_names == tasks and metrics.tasks_seen == 2
    manifest = json.loads((output / "model" / "conpet_config.json").read_text())
    assert manifest["base_model"]["name_or_path"] == DEFAULT_BASE_MODEL  # not a machine-specific cache path
    assert ModelCard.load(output / "model" / "README.md").data.base_model == DEFAULT_BASE_MODEL

    assert cli.main(["eval", str(output), "--max-eval-examples", "4"]) == 0
    assert "selector accuracy:" in capsys.readouterr().out
    assert cli.main(["route", str(output), "Great pasta, rude waiter."]) == 0
    assert "answer:" in capsys.readouterr().out


def test_push_sends_the_run_as_one_commit_and_it_loads_back(finished_run, minihub, monkeypatch, capsys, tmp_path):
    output, _ = finished_run
    monkeypatch.setenv("HF_ENDPOINT", minihub.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_never_printed")
    capsys.readouterr()
    assert cli.main(["push", str(output), "user/cli-push", "--private"]) == 0
    printed = capsys.readouterr()
    assert f"{minihub.endpoint}/user/cli-push" in printed.out
    assert "hf_secret_never_printed" not in printed.out + printed.err
    repo = minihub.repo("user/cli-push")
    assert repo.private and len(repo.history()) == 2  # "initial commit" + the one push
    files = set(minihub.files("user/cli-push"))
    assert {"conpet_config.json", "README.md", "accuracy_matrix.png", "examples.json"} <= files
    assert {f"tasks/{name}/adapter_model.safetensors" for name in TASKS} <= files
    pulled = ConPetModelForCausalLM.from_pretrained("user/cli-push", endpoint=minihub.endpoint, cache_dir=tmp_path / "cache")
    local = ConPetModelForCausalLM.from_pretrained(output / "model")
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(pulled(input_ids=ids, task_ids=[1]).logits, local(input_ids=ids, task_ids=[1]).logits)


def test_push_of_a_folder_that_is_not_a_system_is_one_line(tmp_path, capfd):
    capfd.readouterr()
    assert cli.main(["push", str(tmp_path), "user/x"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "not a saved hf_conpet system" in err


def test_demo_builds_the_page_with_the_saved_examples_without_serving_it(finished_run, monkeypatch, capsys):
    gr = pytest.importorskip("gradio")
    output, _ = finished_run
    launched = {}

    def fake_launch(self, **options):
        launched.update(options, config=self.get_config_file())

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    assert cli.main(["demo", str(output), "--port", "7999"]) == 0
    assert launched["server_name"] == "127.0.0.1" and launched["server_port"] == 7999 and launched["share"] is False
    examples = json.loads((output / "model" / "examples.json").read_text())["examples"]
    assert {row["task"] for row in examples} == set(TASKS) and len(examples) == 3 * len(TASKS)
    text = json.dumps(launched["config"])
    assert examples[0]["input"] in text and "compare" in text


@pytest.fixture(scope="module")
def stream_dir(tmp_path_factory):
    """Two tasks of one's own: a parquet dataset with a ClassLabel answer column, and chat data in jsonl."""
    import datasets

    root = tmp_path_factory.mktemp("own_data")
    features = datasets.Features({"text": datasets.Value("string"), "verdict": datasets.ClassLabel(names=["yes", "no"])})
    for split, count in (("train", 24), ("test", 4)):
        rows = {"text": [f"claim {k}" for k in range(count)], "verdict": [k % 2 for k in range(count)]}
        if split == "test":  # a long document: scored like any other, but too long to offer in the demo
            rows["text"][0] = "claim " + "very " * 1000
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / f"claims_{split}.parquet"))
    with open(root / "chat.jsonl", "w") as handle:
        for k in range(28):
            messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"colour {k}?"},
                        {"role": "assistant", "content": ["red", "blue"][k % 2]}]
            handle.write(json.dumps({"messages": messages, "split": "train" if k < 24 else "test"}) + "\n")
    for split in ("train", "test"):
        lines = [line for line in (root / "chat.jsonl").read_text().splitlines() if json.loads(line)["split"] == split]
        (root / f"chat_{split}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "stream.yaml").write_text(
        "tasks:\n"
        "  - name: claims\n"
        "    dataset: ./claims_train.parquet\n"
        "    data_files: {train: claims_train.parquet, test: claims_test.parquet}\n"
        "    input: text\n"
        "    output: verdict\n"
        "    instruction: Is the claim true?\n"
        "  - name: colours\n"
        "    dataset: ./chat_train.jsonl\n"
        "    data_files: {train: chat_train.jsonl, test: chat_test.jsonl}\n"
        "    chat: messages\n"
        "    labels: [red, blue]\n"
        "    instruction: Name the colour.\n"
    )
    return root


def test_a_stream_file_of_local_datasets_runs_end_to_end(one_thread, tiny_model, stream_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    output = tmp_path / "out"
    argv = ["run", "--model", str(tiny_model), "--stream", str(stream_dir / "stream.yaml"), "--output", str(output),
            "--max-steps-per-task", "2", "--batch-size", "4", "--max-length", "64", "--max-eval-examples", "4"]
    assert cli.main(argv) == 0
    manifest = json.loads((output / "model" / "conpet_config.json").read_text())
    assert [t["name"] for t in manifest["tasks"]] == ["claims", "colours"]
    assert manifest["tasks"][0]["labels"] == ["yes", "no"]  # from the ClassLabel
    recorded = json.loads((output / "run_args.json").read_text())
    assert recorded["stream"] == str((stream_dir / "stream.yaml").resolve()) and recorded["tasks"] == ["claims", "colours"]
    from hf_conpet.data.stream_file import load_stream_file

    stream = load_stream_file(stream_dir / "stream.yaml")
    assert stream["colours"].test[0]["input"] == "colour 24?" and stream["colours"].test[0]["output"] == "red"
    assert stream["claims"].test[1]["output"] == "no"
    examples = json.loads((output / "model" / "examples.json").read_text())["examples"]
    assert [row["input"] for row in examples if row["task"] == "claims"] == ["claim 1", "claim 2", "claim 3"]
    capsys.readouterr()
    assert cli.main(["eval", str(output)]) == 0  # the recorded stream file's test splits, not a data dir
    printed = capsys.readouterr().out
    assert "claims" in printed and "colours" in printed and str(stream_dir / "stream.yaml") in printed
    assert cli.main(["eval", str(output), "--tasks", "colours"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert rows[:2] == ["colours", "mean"]  # the table holds the one task asked for


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("output: verdict", "output: nope"), "has no column 'nope'"),
    (lambda t: t.replace("test: claims_test.parquet", "validation: claims_test.parquet"), "no split 'test'"),
    (lambda t: t.replace("name: colours", "name: claims"), "task 'claims' is listed twice"),
    (lambda t: t.replace("    chat: messages\n", "    chat: messages\n    colour: red\n"), "unknown key 'colour'"),
    (lambda t: t.replace("./chat_train.jsonl", "./missing.jsonl"), "local path that does not exist"),
    (lambda t: t.replace("    labels: [red, blue]\n", "    metric: bleu\n"), "unknown metric 'bleu'"),
    (lambda t: t + "  - oops\n", "tasks[2] must be a mapping"),
    (lambda t: "tasks: [\n", "is not valid YAML"),
    (lambda t: t.replace("./chat_train.jsonl", "someone/not-downloaded"), "cannot load the dataset"),
    (lambda t: t.replace("{train: chat_train.jsonl, test: chat_test.jsonl}", "{}"), "'data_files' is an empty mapping"),
    (lambda t: t.replace("{train: chat_train.jsonl, test: chat_test.jsonl}", "[]"), "'data_files' must be a file"),
    (lambda t: t.replace("test: chat_test.jsonl}", "test: [chat_test.jsonl, 3]}"), "'data_files' entry 'test'"),
    (lambda t: t.replace("    chat: messages\n", "    chat: messages\n    revision: main\n"), "'revision' pins a Hub dataset"),
    (lambda t: t.replace("input: text", "input: [text]"), "'input' must be a string"),
    (lambda t: t.replace("Name the colour.", "Name the colour \udcff."), "is not UTF-8 text"),
])
def test_a_bad_stream_file_fails_in_one_line_before_anything_is_written(edit, expected, tiny_model, stream_dir, tmp_path,
                                                                        capfd, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    bad = stream_dir / f"bad_{abs(hash(expected))}.yaml"
    bad.write_bytes(edit((stream_dir / "stream.yaml").read_text()).encode("utf-8", "surrogateescape"))
    output = tmp_path / "out"
    capfd.readouterr()
    status = cli.main(["run", "--model", str(tiny_model), "--stream", str(bad), "--output", str(output)])
    err = capfd.readouterr().err
    assert status == 2 and err.count("\n") == 1 and expected in err, err
    assert not output.exists()


def test_every_hf_conpet_command_in_the_readme_parses_as_written():
    """Each `hf-conpet ...` line of the README's code blocks is accepted by the parser as written
    (flags, values, subcommands); `...` stands for the flags of the line above. The quickstart itself
    runs in test_quickstart_path_on_the_embedded_model_and_benchmark (reduced budget)."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shell_lines, language = [], None
    for line in readme.splitlines():
        if line.startswith("```"):
            language = None if language is not None else (line[3:].strip() or "text")
        elif language in ("bash", "sh", "text"):
            if shell_lines and shell_lines[-1].endswith("\\"):  # a command continued on the next line
                shell_lines[-1] = shell_lines[-1][:-1] + line
            else:
                shell_lines.append(line)
    commands = []
    for block in [shell_lines]:
        for line in block:
            for part in re.split(r"&&|;", line.split("  #")[0]):
                words = shlex.split(part.strip().replace("[--private]", "--private")) if part.strip() else []
                while words and "hf-conpet" not in words[0]:
                    words = words[1:]
                if words:
                    commands.append([w for w in words[1:] if w != "..."])
    assert len(commands) >= 10, commands
    parser = cli.build_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except cli.CliError as error:  # the parser reports problems as CliError
            raise AssertionError(f"README command `hf-conpet {' '.join(argv)}` does not parse: {error}") from None
