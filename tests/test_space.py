"""The Gradio Space (spaces/app.py) served for real on loopback and called with `gradio_client`.

A tiny system (random Llama + byte tokenizer, two tasks, a ConPET selector) is saved, loaded back
the way the Space loads `HF_CONPET_SYSTEM`, wrapped by `build_demo`, launched on 127.0.0.1 and
queried through its `predict` endpoint: what a visitor's browser would get.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from hf_conpet import ConPetConfig, ConPetModelForCausalLM  # noqa: E402
from hf_conpet.selectors import AnalyticSelector, ConPetSelector, TaskEndContext  # noqa: E402

from tiny_models import randomize_live_task, tiny_byte_tokenizer, tiny_llama_for  # noqa: E402

# gradio's queue trips pandas deprecation warnings of its own; they say nothing about the Space
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

APP = Path(__file__).resolve().parent.parent / "spaces" / "app.py"
TASKS = {"sst2": ("Is the sentiment positive or negative?", ["positive", "negative"]),
         "agnews": ("Which topic is this news about?", ["world", "sports", "business", "science"])}


@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("hf_conpet_space_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def system_dir(tmp_path_factory):
    """A saved two-task system whose manifest names a local base folder (so it loads by path alone)."""
    root = tmp_path_factory.mktemp("space")
    tokenizer = tiny_byte_tokenizer()
    tiny_llama_for(tokenizer).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    base = AutoModelForCausalLM.from_pretrained(root / "base").eval()
    model = ConPetModelForCausalLM(base, ConPetConfig(selector="conpet", r=4))
    model.selector = ConPetSelector.for_model(model)  # before add_task: one output per task
    torch.manual_seed(0)
    for name, (instruction, labels) in TASKS.items():
        model.add_task(name, labels=labels, instruction=instruction)
        randomize_live_task(model)
    model.freeze_tasks()
    metrics = {"task_names": list(TASKS), "matrix": [[0.9, None], [0.8, 0.7]],
               "summary": {"AP": 0.75, "BWT": -0.1, "selector_accuracy": 0.95}}
    model.save_pretrained(root / "system", metrics=metrics)
    return root / "system"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_space_serves_routing_and_answer_over_http(app, system_dir):
    model, tokenizer = app.load_system(str(system_dir))
    demo = app.build_demo(model, tokenizer)
    assert isinstance(demo, gr.Blocks)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, ssr_mode=False)
    try:
        client = gradio_client.Client(demo.local_url, verbose=False, download_files=False)
        for instruction in ("sst2", app.NO_INSTRUCTION):
            label, answer, prompt = client.predict("Great pasta, rude waiter.", instruction, api_name="/predict")
            confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
            assert set(confidences) == set(TASKS)
            assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-5)
            assert label["label"] == max(confidences, key=confidences.get)
            assert isinstance(answer, str) and len(answer.splitlines()) <= 1  # the first line only
            assert prompt.endswith("Great pasta, rude waiter.\nOutput: ")
            if instruction == "sst2":
                assert prompt.startswith(TASKS["sst2"][0] + "\n")
    finally:
        demo.close()

    # the same probabilities as the library's own route() on that prompt
    probabilities, _, _ = app.make_predict(model, tokenizer)("Great pasta, rude waiter.", "sst2")
    expected = model.route([TASKS["sst2"][0] + "\nGreat pasta, rude waiter.\nOutput: "], tokenizer=tokenizer)[0]
    assert list(probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-6)


def test_the_page_shows_tasks_metrics_and_the_accuracy_matrix(app, system_dir):
    model, tokenizer = app.load_system(str(system_dir))
    config = app.build_demo(model, tokenizer).get_config_file()
    values = [c.get("props", {}).get("value") for c in config["components"]]
    tables = [v["data"] for v in values if isinstance(v, dict) and "data" in v and "headers" in v]
    assert [row[1:3] for row in tables[0]] == [["sst2", "positive, negative"], ["agnews", "world, sports, business, science"]]
    assert ["AP: mean accuracy after the last task", "0.750"] in tables[1]
    images = [v for v in values if isinstance(v, dict) and str(v.get("path", "")).endswith(".png")]
    assert len(images) == 1 and Path(images[0]["path"]).read_bytes().startswith(b"\x89PNG")


def test_an_analytic_router_system_routes_in_the_space(app, tmp_path):
    """A system whose router was solved in closed form loads and routes like the library's route()."""
    tokenizer = tiny_byte_tokenizer()
    tiny_llama_for(tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = ConPetModelForCausalLM(AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval(),
                                   ConPetConfig(selector="analytic", r=4))
    model.selector = AnalyticSelector.for_model(model)
    inputs = {"sst2": ["A joy to watch.", "Dull and long.", "I loved it.", "Awful acting."],
              "agnews": ["Stocks fell today.", "The team won the cup.", "New chip released.", "Talks in Geneva."]}

    def features(prompts):
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        return model.prompt_features(batch["input_ids"], batch["attention_mask"])

    for index, (name, (instruction, labels)) in enumerate(TASKS.items()):
        model.add_task(name, labels=labels, instruction=instruction)
        randomize_live_task(model)
        model.freeze_tasks()
        prompts = [f"{instruction}\n{text}\nOutput: " for text in inputs[name]]
        model.selector.end_task(TaskEndContext(task_index=index, train=prompts, validation=prompts[:2], memory=None,
                                               features=features, batch_size=4, steps=0, replay_ratio=1.0, seed=index))
    model.save_pretrained(tmp_path / "system")
    loaded, loaded_tokenizer = app.load_system(str(tmp_path / "system"))
    assert loaded.selector.kind == "analytic"
    probabilities, answer, _ = app.make_predict(loaded, loaded_tokenizer)("Stocks rose.", "agnews")
    expected = model.route([TASKS["agnews"][0] + "\nStocks rose.\nOutput: "], tokenizer=tokenizer)[0]
    assert list(probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert max(probabilities, key=probabilities.get) == "agnews" and isinstance(answer, str)


def test_missing_system_gives_a_clear_error(app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import hf_conpet.demo

    monkeypatch.setattr(hf_conpet.demo, "DEFAULT_SYSTEM", Path("no") / "such" / "run")
    with pytest.raises(app.SystemNotFoundError, match="set HF_CONPET_SYSTEM"):
        app.system_source({})
    assert app.system_source({"HF_CONPET_SYSTEM": "user/repo"}) == "user/repo"
    with pytest.raises(app.SystemNotFoundError, match="no such folder, and it is not a Hub repo id"):
        app.resolve_system(str(tmp_path / "nowhere"))
    with pytest.raises(app.SystemNotFoundError, match="is not an hf_conpet system"):
        app.resolve_system(str(tmp_path))


def test_a_system_without_selector_answers_with_the_chosen_instruction(app):
    tokenizer = tiny_byte_tokenizer()
    model = ConPetModelForCausalLM(tiny_llama_for(tokenizer).eval(), ConPetConfig(selector="none", r=4))
    for name, (instruction, labels) in TASKS.items():
        model.add_task(name, labels=labels, instruction=instruction)
    model.freeze_tasks()
    predict = app.make_predict(model.eval(), tokenizer)
    probabilities, answer, _ = predict("Stocks fell.", "agnews")
    assert probabilities == {"sst2": 0.0, "agnews": 1.0} and isinstance(answer, str)
    with pytest.raises(gr.Error, match="no selector"):
        predict("Stocks fell.", app.NO_INSTRUCTION)


def test_a_static_conpet_system_is_described_as_trained_and_answers_without_instruction(app):
    from hf_conpet import method_config

    tokenizer = tiny_byte_tokenizer()
    model = ConPetModelForCausalLM(tiny_llama_for(tokenizer).eval(), method_config("lwf_replay", r=4))
    model.add_task("shared", instruction="one module shared by every task")
    model.freeze_tasks()
    config = app.build_demo(model, tokenizer).get_config_file()
    header = next(c["props"]["value"] for c in config["components"]
                  if str(c.get("props", {}).get("value", "")).startswith("# "))
    assert "one LoRA module shared by every task" in header and "Static ConPET" in header and "LwF" in header
    assert "selector" not in header
    probabilities, answer, _ = app.make_predict(model.eval(), tokenizer)("Stocks fell.", app.NO_INSTRUCTION)
    assert probabilities == {"shared": 1.0} and isinstance(answer, str)


def test_space_card_and_requirements():
    """The Hub reads the card's YAML to build the Space; requirements must cover hf_conpet's own."""
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(APP.parent / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert str(card.data.sdk_version).split(".")[0] == gr.__version__.split(".")[0]
    assert len(card.data.short_description) <= 60
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((APP.parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    listed = [line.split("#")[0].strip() for line in (APP.parent / "requirements.txt").read_text().splitlines()]
    assert {d.replace(" ", "") for d in declared} == {line for line in listed if line}


def test_saved_examples_show_their_true_task_and_a_forced_task_answers_beside_the_routed_one(app, system_dir, tmp_path):
    import shutil

    import hf_conpet.demo

    folder = tmp_path / "with_examples"
    shutil.copytree(system_dir, folder)
    model, tokenizer = app.load_system(str(folder))
    model.save_pretrained(folder, examples={"sst2": ["A joy to watch."], "agnews": ["Stocks fell today."]})
    model, tokenizer = app.load_system(str(folder))
    config = app.build_demo(model, tokenizer).get_config_file()
    datasets = [c["props"] for c in config["components"] if c.get("type") == "dataset"]
    assert datasets and ["A joy to watch.", "sst2"] in datasets[0]["samples"]
    routed_task, routed_answer, forced_answer = hf_conpet.demo.make_compare(model, tokenizer)(
        "Stocks fell today.", app.NO_INSTRUCTION, "sst2")
    assert routed_task in TASKS and isinstance(routed_answer, str)
    prompt = app.build_prompt(model, "Stocks fell today.", app.NO_INSTRUCTION)
    inputs = tokenizer([prompt], return_tensors="pt")
    generated = model.generate(**inputs, task_ids=torch.tensor([0]), max_new_tokens=len(forced_answer) + 8,
                               do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert expected.startswith(forced_answer)
