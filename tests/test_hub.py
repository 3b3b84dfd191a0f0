"""Model card, accuracy plot, push and pull of a saved system, against loopback Hub stand-ins.

The systems here are hand-written saved layouts (tiny safetensors, JSON manifests): what the
Hub layer sees, without training anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, hf_hub_download, metadata_load, snapshot_download
from safetensors.torch import save_file

from hf_conpet.hub import (
    DOWNLOAD_PATTERNS,
    HubPushError,
    LayoutError,
    download_system,
    layout_files,
    push_folder,
    validate_layout,
)
from hf_conpet.model_card import render_model_card, write_model_card
from hf_conpet.plots import plot_accuracy_matrix

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEN = ["yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia"]


# ------------------------------------------------------------------------------ fixtures
def make_metrics(names: list[str]) -> dict:
    """The dict shape hf_conpet.metrics writes: lower-triangular matrix plus a summary."""
    n = len(names)
    matrix = [
        [round(0.9 - 0.05 * (j - i) - 0.01 * i, 4) if i <= j else None for i in range(n)] for j in range(n)
    ]
    last = matrix[-1]
    summary = {
        "AP": round(sum(last) / n, 4),
        "F.Ra": round(sum(matrix[i][i] - last[i] for i in range(n - 1)) / (n - 1), 4) if n > 1 else None,
        "BWT": round(sum(last[i] - matrix[i][i] for i in range(n - 1)) / (n - 1), 4) if n > 1 else None,
        "FWT": None,
        "selector_accuracy": 0.875 if n > 1 else None,
    }
    return {"task_names": list(names), "accuracy_matrix": matrix, "summary": summary, "examples_scored": [32] * n}


def make_manifest(
    names: list[str],
    *,
    task_type: str = "causal_lm",
    base: str = BASE_ID,
    selector: str | None = "conpet",
    metrics: dict | None = None,
) -> dict:
    return {
        "format_version": 1,
        "library_version": "0.1.0",
        "base_model": {"name_or_path": base, "revision": "main", "model_type": "llama", "license": "apache-2.0"},
        "config": {
            "r": 4,
            "lora_alpha": 8.0,
            "target_modules": ["q_proj", "k_proj"],
            "selector": selector or "none",
            "top_k": 1,
            "replay_ratio": 1.0,
            "batches_per_task": 60,
        },
        "task_type": task_type,
        "tasks": [
            {
                "name": name,
                "labels": ["positive", "negative"],
                "instruction": f"Classify the {name} text | label it.",
                "num_train": 1000 + k,
                "num_test": 100 + k,
            }
            for k, name in enumerate(names)
        ],
        "selector": selector,
        "metrics": metrics,
    }


def write_layout(
    folder: Path, names: list[str], *, selector: bool = True, metrics: bool = True, card: bool = True
) -> Path:
    """A saved system as `save_pretrained` writes it (manifest, PEFT adapters, selector, card)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = make_manifest(
        names, selector="conpet" if selector else None, metrics=make_metrics(names) if metrics else None
    )
    (folder / "conpet_config.json").write_text(json.dumps(manifest, indent=2))
    generator = torch.Generator().manual_seed(0)
    for name in names:
        task_dir = folder / "tasks" / name
        task_dir.mkdir(parents=True)
        (task_dir / "adapter_config.json").write_text(
            json.dumps(
                {
                    "peft_type": "LORA",
                    "task_type": "CAUSAL_LM",
                    "r": 4,
                    "lora_alpha": 8,
                    "target_modules": ["q_proj", "k_proj"],
                    "base_model_name_or_path": BASE_ID,
                }
            )
        )
        save_file(
            {
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(
                    4, 16, generator=generator
                ),
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(16, 4),
            },
            task_dir / "adapter_model.safetensors",
        )
    if selector:
        (folder / "selector").mkdir()
        (folder / "selector" / "config.json").write_text(
            json.dumps({"kind": "conpet", "num_tasks": len(names)})
        )
        save_file(
            {"head.weight": torch.randn(len(names), 64, generator=generator)},
            folder / "selector" / "model.safetensors",
        )
    if card:
        write_model_card(folder, repo_id="user/conpet-test")
    return folder


def expected_layout(names: list[str], *, selector: bool = True, card: bool = True) -> set[str]:
    files = {"conpet_config.json"}
    for name in names:
        files |= {f"tasks/{name}/adapter_config.json", f"tasks/{name}/adapter_model.safetensors"}
    if selector:
        files |= {"selector/config.json", "selector/model.safetensors"}
    if card:
        files |= {"README.md", "accuracy_matrix.png"}
    return files


def add_clutter(folder: Path) -> None:
    """What a training folder also holds: none of it may be pushed."""
    (folder / "optimizer.pt").write_bytes(b"\x80\x04pickle")
    (folder / "trainer_state.json").write_text("{}")
    (folder / "logs").mkdir()
    (folder / "logs" / "events.txt").write_text("step 1")
    (folder / "logs" / "curve.png").write_bytes(PNG_SIGNATURE)
    (folder / "tasks" / "notes.md").write_text("scratch")


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------------- plot
def test_plot_writes_a_real_png_atomically(tmp_path):
    from matplotlib.image import imread

    out = plot_accuracy_matrix(
        [[0.76], [0.70, 0.66], [0.6, None, 0.45]],
        ["sst2", "agnews", "copa"],
        tmp_path / "plots" / "accuracy_matrix.png",
        title="three tasks",
    )
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = imread(out)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert files_under(tmp_path / "plots") == {"accuracy_matrix.png"}  # no temp file left behind


def test_plot_handles_ten_tasks_percentages_and_rejects_a_name_mismatch(tmp_path):
    metrics = make_metrics(TEN)
    percent = [[None if v is None else 100 * v for v in row] for row in metrics["accuracy_matrix"]]
    assert plot_accuracy_matrix(percent, TEN, tmp_path / "ten.png").read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="3 tasks but 2 task names"):
        plot_accuracy_matrix([[1.0], [1.0, 1.0], [1.0, 1.0, 1.0]], ["a", "b"], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


# ----------------------------------------------------------------------------------- card
@pytest.mark.parametrize("names", [["sst2"], TEN], ids=["1-task", "10-task"])
def test_card_renders_and_its_yaml_parses(tmp_path, names):
    manifest = make_manifest(names, metrics=make_metrics(names))
    card = render_model_card(manifest, None, "user/conpet-demo")
    path = tmp_path / "README.md"
    path.write_text(card.content, encoding="utf-8")

    meta = metadata_load(path)
    assert meta["library_name"] == "hf-conpet"
    assert meta["base_model"] == BASE_ID and meta["base_model_relation"] == "adapter"
    assert {"hf-conpet", "peft", "lora", "continual-learning"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "text-generation"

    loaded = ModelCard.load(path)
    results = {r.metric_type: r.metric_value for r in loaded.data.eval_results}
    summary = make_metrics(names)["summary"]
    assert results["average_performance"] == pytest.approx(summary["AP"])
    assert "forward_transfer" not in results  # None is not a result
    if len(names) > 1:
        assert results["backward_transfer"] == pytest.approx(summary["BWT"])
        assert results["selector_accuracy"] == pytest.approx(0.875)
    else:
        assert "backward_transfer" not in results

    text = loaded.text
    positions = [text.index(f"| `{name}` |") for name in names]
    assert positions == sorted(positions), "tasks must be listed in training order"
    assert "![Matrix of accuracy" in text and "(accuracy_matrix.png)" in text
    assert 'ConPetModelForCausalLM.from_pretrained("user/conpet-demo")' in text
    assert f'PeftModel.from_pretrained(base, "user/conpet-demo", subfolder="tasks/{names[0]}")' in text
    assert "Classify the sst2 text \\| label it." in text  # pipes escaped inside the table
    for needle in (
        "@article{song2023conpet",
        "2309.14763",
        "@inproceedings{zhao2024sapt",
        "2401.08295",
        "AP",
        "F.Ra",
        "BWT",
        "FWT",
        "Selector accuracy",
        '"top_k": 1',
    ):
        assert needle in text


@pytest.mark.parametrize(
    "task_type, pipeline_tag, class_name",
    [
        ("seq2seq_lm", "text2text-generation", "ConPetModelForSeq2SeqLM"),
        ("sequence_classification", "text-classification", "ConPetModelForSequenceClassification"),
        ("SEQ_CLS", "text-classification", "ConPetModelForSequenceClassification"),
    ],
)
def test_card_pipeline_tag_follows_task_type(task_type, pipeline_tag, class_name):
    card = render_model_card(make_manifest(["boolq"], task_type=task_type), None, None)
    assert card.data.pipeline_tag == pipeline_tag
    assert f"{class_name}.from_pretrained" in card.text


def test_card_without_metrics_or_hub_base_model(tmp_path):
    local_base = str(tmp_path / "converted-smollm2")
    os.makedirs(local_base)
    card = render_model_card(make_manifest(["sst2", "wic"], base=local_base, selector=None), None, None)
    data = card.data.to_dict()
    assert "base_model" not in data and "model-index" not in data  # a local path is not a Hub id
    assert "No evaluation was recorded" in card.text
    assert "oracle" in card.text and "accuracy_matrix.png" not in card.text


def test_write_model_card_writes_card_and_plot(tmp_path):
    folder = write_layout(tmp_path / "system", ["sst2", "agnews", "copa"])
    assert (folder / "accuracy_matrix.png").read_bytes()[:8] == PNG_SIGNATURE
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "hf-conpet"
    assert not [p for p in files_under(folder) if p.endswith(".tmp")]


def test_template_ships_as_package_data():
    template = resources.files("hf_conpet").joinpath("templates", "conpet_card.md")
    assert template.is_file() and "{{ card_data }}" in template.read_text(encoding="utf-8")
    assert '"templates/*"' in (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_example_card_in_model_cards_is_current():
    """model_cards/example/ is rendered from the package template; regenerate it, never edit it.

    HF_CONPET_REGENERATE_EXAMPLE_CARD=1 pytest tests/test_hub.py -k example  rewrites it.
    """
    example = REPO_ROOT / "model_cards" / "example"
    names = ["sst2", "agnews", "copa", "wic"]
    manifest = make_manifest(names, metrics=make_metrics(names))
    if os.environ.get("HF_CONPET_REGENERATE_EXAMPLE_CARD") == "1":
        example.mkdir(parents=True, exist_ok=True)
        (example / "conpet_config.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        write_model_card(example, "me/conpet-smollm2-longseq", manifest=manifest)
    rendered = render_model_card(manifest, None, "me/conpet-smollm2-longseq").content
    assert (example / "README.md").read_text(encoding="utf-8") == rendered


def test_the_card_says_how_many_test_examples_each_score_used_and_the_base_licence():
    names = ["sst2", "agnews"]
    metrics = make_metrics(names)
    metrics["examples_scored"] = [32, 17]
    text = render_model_card(make_manifest(names, metrics=metrics), None, "user/x").content
    assert "final accuracy (test examples scored)" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1 | `sst2`") or line.startswith("| 2 | `agnews`")]
    assert rows[0].endswith("| 85.0 (32) |") or rows[0].rstrip().endswith("(32) |"), rows[0]
    assert rows[1].rstrip().endswith("(17) |"), rows[1]
    assert "licence: `apache-2.0`" in text and "license: apache-2.0" in text


# ------------------------------------------------------------------------------ layout
def test_layout_files_take_only_the_layout(tmp_path):
    names = ["sst2", "agnews"]
    folder = write_layout(tmp_path / "system", names)
    add_clutter(folder)
    assert set(layout_files(folder)) == expected_layout(names)
    validate_layout(folder)  # root optimizer.pt is Trainer state, tolerated locally


def test_validate_refuses_pickles_code_and_missing_files(tmp_path):
    folder = write_layout(tmp_path / "system", ["sst2", "agnews"])
    (folder / "tasks" / "sst2" / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(LayoutError, match="tasks/sst2/adapter_model.bin"):
        validate_layout(folder)
    (folder / "tasks" / "sst2" / "adapter_model.bin").unlink()
    (folder / "selector" / "modeling.py").write_text("import os")
    with pytest.raises(LayoutError, match="selector/modeling.py"):
        validate_layout(folder)
    (folder / "selector" / "modeling.py").unlink()
    (folder / "tasks" / "agnews" / "adapter_model.safetensors").unlink()
    with pytest.raises(LayoutError, match="missing tasks/agnews/adapter_model.safetensors"):
        validate_layout(folder)
    with pytest.raises(LayoutError, match="not an hf_conpet repo: no conpet_config.json"):
        validate_layout(tmp_path)


# ------------------------------------------------------------------------- push (MiniHub)
def test_push_is_one_commit_of_exactly_the_layout(minihub, tmp_path):
    names = ["sst2", "agnews", "copa"]
    folder = write_layout(tmp_path / "system", names)
    add_clutter(folder)
    info = push_folder(folder, "user/conpet-sys", endpoint=minihub.endpoint, commit_message="three tasks")

    repo = minihub.repo("user/conpet-sys")
    history = repo.history()
    assert [c.summary for c in history] == ["three tasks", "initial commit"]
    commit = history[0]
    assert info.oid == commit.oid
    assert set(commit.added) == expected_layout(names)
    assert set(minihub.files("user/conpet-sys")) == expected_layout(names) | {".gitattributes"}
    for path, content in commit.added.items():
        assert content == (folder / path).read_bytes()
    assert not minihub.unhandled


def test_push_honours_hf_endpoint_and_skips_unchanged_files(minihub, tmp_path, monkeypatch):
    folder = write_layout(tmp_path / "system", ["sst2"], card=False)
    monkeypatch.setenv("HF_ENDPOINT", minihub.endpoint)
    first = push_folder(folder, "user/env-sys")
    second = push_folder(folder, "user/env-sys")  # the repo exists: create_repo is a no-op
    assert second.oid == first.oid  # nothing changed, no empty commit
    assert len(minihub.repo("user/env-sys").history()) == 2


def test_failed_commit_raises_and_leaves_the_repo_unchanged(minihub, tmp_path):
    names = ["sst2", "agnews"]
    folder = write_layout(tmp_path / "system", names)
    minihub.fail_commits = 1
    with pytest.raises(HubPushError, match="user/broken-sys") as raised:
        push_folder(folder, "user/broken-sys", endpoint=minihub.endpoint)
    assert "repo was left as it was" in str(raised.value)
    assert minihub.failed_commits[0]["paths"] == sorted(expected_layout(names))  # the whole payload arrived
    assert [c.summary for c in minihub.repo("user/broken-sys").history()] == ["initial commit"]
    assert set(minihub.files("user/broken-sys")) == {".gitattributes"}


def test_push_to_a_branch_and_as_a_pull_request(minihub, tmp_path):
    folder = write_layout(tmp_path / "system", ["sst2"], card=False)
    push_folder(folder, "user/branchy", endpoint=minihub.endpoint, revision="after-task-1")
    repo = minihub.repo("user/branchy")
    assert "conpet_config.json" in minihub.files("user/branchy", "after-task-1")
    assert set(minihub.files("user/branchy")) == {".gitattributes"}  # main untouched
    info = push_folder(folder, "user/branchy", endpoint=minihub.endpoint, create_pr=True)
    assert info.pr_url and info.pr_url.endswith("/discussions/1")
    assert "conpet_config.json" in minihub.files("user/branchy", "refs/pr/1")
    assert len(repo.history("main")) == 1


def test_only_the_main_process_pushes(minihub, tmp_path, monkeypatch):
    folder = write_layout(tmp_path / "system", ["sst2"], card=False)
    # a Trainer earlier in the session started accelerate's single-process state, which would
    # (rightly) take precedence over RANK: simulate a fresh launcher-started rank instead
    from accelerate.state import PartialState

    monkeypatch.setattr(PartialState, "_shared_state", {})
    monkeypatch.setenv("RANK", "1")
    assert push_folder(folder, "user/ranked", endpoint=minihub.endpoint) is None
    assert minihub.requests == []
    monkeypatch.setenv("RANK", "0")
    assert push_folder(folder, "user/ranked", endpoint=minihub.endpoint) is not None


def test_push_refuses_a_folder_that_is_not_a_system(minihub, tmp_path):
    (tmp_path / "random.txt").write_text("hi")
    with pytest.raises(LayoutError, match="no conpet_config.json"):
        push_folder(tmp_path, "user/nothing", endpoint=minihub.endpoint)
    assert minihub.requests == []


def test_push_then_download_round_trip_through_minihub(minihub, tmp_path):
    names = ["sst2", "agnews"]
    folder = write_layout(tmp_path / "system", names)
    push_folder(folder, "user/round-trip", endpoint=minihub.endpoint)
    local = download_system("user/round-trip", endpoint=minihub.endpoint, cache_dir=tmp_path / "cache")
    assert files_under(local) == expected_layout(names)
    for path in expected_layout(names):
        assert (local / path).read_bytes() == (folder / path).read_bytes()
    assert not minihub.unhandled


def test_download_checks_the_file_list_before_fetching(minihub, tmp_path):
    folder = write_layout(tmp_path / "system", ["sst2"], card=False)
    files = {p: (folder / p).read_bytes() for p in layout_files(folder)}
    minihub.add_repo("user/pickled", {**files, "tasks/sst2/adapter_model.bin": b"\x80\x04"})
    with pytest.raises(LayoutError, match="tasks/sst2/adapter_model.bin"):
        download_system("user/pickled", endpoint=minihub.endpoint, cache_dir=tmp_path / "cache")
    assert not [r for r in minihub.requests if "/resolve/" in r[1]], "nothing may be downloaded"


# --------------------------------------------------------------------------- pull (olah)
def test_olah_serves_a_local_git_repo_to_the_official_client(olah, tmp_path):
    names = ["sst2", "agnews"]
    folder = write_layout(tmp_path / "system", names)
    (folder / "notes").mkdir()
    (folder / "notes" / "train.log").write_text("not part of the layout")
    olah.add_repo("user/olah-sys", folder)

    snapshot = Path(
        snapshot_download(
            "user/olah-sys",
            endpoint=olah.endpoint,
            cache_dir=tmp_path / "c1",
            allow_patterns=DOWNLOAD_PATTERNS,
        )
    )
    assert files_under(snapshot) == expected_layout(names)
    config = hf_hub_download(
        "user/olah-sys",
        "adapter_config.json",
        subfolder="tasks/agnews",
        endpoint=olah.endpoint,
        cache_dir=tmp_path / "c2",
    )
    assert Path(config).read_bytes() == (folder / "tasks" / "agnews" / "adapter_config.json").read_bytes()


def test_olah_through_hf_endpoint_in_a_fresh_process(olah, tmp_path):
    folder = write_layout(tmp_path / "system", ["sst2"], card=False)
    olah.add_repo("user/olah-env", folder)
    env = {
        **os.environ,
        "HF_ENDPOINT": olah.endpoint,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    code = "import huggingface_hub as h; print(h.snapshot_download('user/olah-env'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    snapshot = Path(out.stdout.strip().splitlines()[-1])
    assert str(snapshot).startswith(str(tmp_path / "hf-home"))
    assert files_under(snapshot) == expected_layout(["sst2"], card=False)


def test_download_system_via_olah_and_hf_endpoint(olah, tmp_path, monkeypatch):
    names = ["sst2", "agnews", "copa"]
    folder = write_layout(tmp_path / "system", names)
    (folder / "scratch.txt").write_text("left behind")
    olah.add_repo("user/olah-dl", folder)
    monkeypatch.setenv("HF_ENDPOINT", olah.endpoint)
    local = download_system("user/olah-dl", cache_dir=tmp_path / "cache")
    assert files_under(local) == expected_layout(names)
    assert validate_layout(local)["tasks"][2]["name"] == "copa"
    olah.remove_repo("user/olah-dl")  # gone from the mirror: offline, the cache still serves it
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert download_system("user/olah-dl", cache_dir=tmp_path / "cache") == local


def test_download_refuses_a_repo_without_manifest(olah, tmp_path):
    folder = write_layout(tmp_path / "system", ["sst2"], card=False)
    (folder / "conpet_config.json").unlink()
    olah.add_repo("user/not-conpet", folder)
    with pytest.raises(LayoutError, match="not an hf_conpet repo: no conpet_config.json"):
        download_system("user/not-conpet", endpoint=olah.endpoint, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "bad_file", ["tasks/sst2/adapter_model.bin", "selector/head.pkl", "modeling_conpet.py"]
)
def test_download_refuses_pickle_or_code(olah, tmp_path, bad_file):
    folder = write_layout(tmp_path / "system", ["sst2"], card=False)
    (folder / bad_file).write_bytes(b"\x80\x04 not safetensors " * 20)
    repo_id = "user/bad-" + bad_file.replace("/", "-").replace(".", "-")
    olah.add_repo(repo_id, folder)
    with pytest.raises(LayoutError, match="refusing .*" + bad_file.replace(".", r"\.")):
        download_system(repo_id, endpoint=olah.endpoint, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.json"))


def test_download_system_returns_a_local_folder_as_is(tmp_path):
    folder = write_layout(tmp_path / "system", ["sst2"], card=False)
    assert download_system(folder) == folder
    assert download_system(str(folder)) == folder
    with pytest.raises(FileNotFoundError, match="no such folder"):
        download_system(tmp_path / "missing" / "dir")


def test_the_cards_usage_snippets_run_against_a_saved_system(tmp_path):
    """Both code blocks of "How to use", executed as written against a saved tiny system."""
    import re

    from transformers import AutoModelForCausalLM

    from hf_conpet import ConPetConfig, ConPetModelForCausalLM
    from hf_conpet.selectors import ConPetSelector

    from tiny_models import randomize_live_task, tiny_byte_tokenizer, tiny_llama_for

    tokenizer = tiny_byte_tokenizer()
    tiny_llama_for(tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = ConPetModelForCausalLM(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), ConPetConfig(r=4))
    model.selector = ConPetSelector.for_model(model)
    for name in ("sst2", "agnews"):
        model.add_task(name, labels=["a", "b"], instruction=f"Do {name}.")
        randomize_live_task(model)
    model.freeze_tasks()
    system = tmp_path / "system"
    model.save_pretrained(system)
    text = write_model_card(system).content
    usage = text[text.index("## How to use"):]
    blocks = re.findall(r"```python\n(.*?)```", usage, flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        code = block.replace("<repo_id or local folder>", str(system))
        namespace: dict = {}
        exec(compile(code, "card-snippet", "exec"), namespace)  # noqa: S102 - our own card, our own folder
        assert namespace["model"] is not None
    assert namespace["model"].__class__.__name__ == "PeftModelForCausalLM"
