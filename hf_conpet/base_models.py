"""Which base model a saved system belongs to, and how to get it back (never pickle, never remote code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


class IncompatibleBaseModelError(ValueError):
    """A saved system and the base model offered to it do not fit together."""


def base_model_id(model: nn.Module) -> str | None:
    """The id the manifest records for the base model: its Hub id where it can be told (also for
    the converted offline default and Hub-cache snapshots), else the path it was loaded from."""
    from .default_model import canonical_model_id

    try:
        return canonical_model_id(model)
    except ValueError:
        return None


#: Layers and values per layer sampled into the weight fingerprint.
FINGERPRINT_LAYERS, FINGERPRINT_VALUES = 4, 16
#: Relative RMS difference of the samples tolerated across dtypes (bf16 rounding is ~0.3%) and
#: across quantization (NF4 / int8 dequantised: ~10%). Same dtype, not quantized: exact.
DTYPE_TOLERANCE, QUANTIZED_TOLERANCE = 0.02, 0.3


def base_model_fingerprint(model: nn.Module, target_paths: list[str]) -> dict[str, Any]:
    """What must match for saved task LoRAs to mean the same thing on another copy of the model."""
    from .default_model import model_revision

    config = getattr(model, "config", None)
    linears = {path: _base_linear(model.get_submodule(path)) for path in target_paths}
    return {
        "name_or_path": base_model_id(model),
        "revision": model_revision(model) if config is not None else None,
        "model_type": getattr(config, "model_type", None),
        "architectures": getattr(config, "architectures", None),
        "target_shapes": {path: [linear.out_features, linear.in_features] for path, linear in linears.items()},
        "weights": weight_samples(linears),
        "license": base_model_license(model),
    }


def base_model_license(model: nn.Module) -> str | None:
    """The base model's licence, where this machine can tell it without the network: the embedded
    default's, or the `license:` of the model card in its local folder or Hub-cache snapshot."""
    from .default_model import DEFAULT_BASE_LICENSE, is_default_model

    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or base_model_id(model)
    if not name:
        return None
    if is_default_model(name) or is_default_model(base_model_id(model)):
        return DEFAULT_BASE_LICENSE
    card = Path(name) / "README.md" if os.path.isdir(name) else None
    if card is None and "/" in str(name) and not os.path.isabs(name):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(name), "README.md")
            card = Path(cached) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - a licence is nice to have, never a reason to fail a save
            card = None
    if card is None or not card.is_file():
        return None
    try:
        from huggingface_hub.repocard import metadata_load

        licence = (metadata_load(card) or {}).get("license")
    except Exception:  # noqa: BLE001
        return None
    return licence if isinstance(licence, str) else None


def _base_linear(module: nn.Module) -> nn.Module:
    return getattr(module, "base_layer", module)


def weight_samples(linears: dict[str, nn.Module]) -> dict[str, Any] | None:
    """A few weight values at fixed positions of a few target layers: enough to tell another model
    of the same shapes (a different checkpoint, a random init), cheap at every save, and readable
    from a quantized copy (dequantised) too. None where weights are not materialised (meta)."""
    paths = sorted(linears)
    paths = paths[:: max(1, len(paths) // FINGERPRINT_LAYERS)][:FINGERPRINT_LAYERS]
    samples, dtypes, quantized = [], set(), False
    for path in paths:
        linear = linears[path]
        weight = linear.weight
        if weight.device.type == "meta":
            return None
        if not weight.dtype.is_floating_point or type(weight).__name__ in ("Params4bit", "Int8Params"):
            weight, quantized = _dequantized(weight), True
            if weight is None:
                return None
        dtypes.add(str(weight.dtype).replace("torch.", ""))
        flat = weight.detach().reshape(-1)
        positions = torch.randint(flat.numel(), (FINGERPRINT_VALUES,), generator=torch.Generator().manual_seed(flat.numel()))
        samples += flat[positions.to(flat.device)].float().cpu().tolist()
    return {"layers": paths, "samples": samples, "dtype": "quantized" if quantized else ",".join(sorted(dtypes))}


def _dequantized(weight: torch.Tensor) -> torch.Tensor | None:
    """bitsandbytes 4-bit / 8-bit weights as floats, without touching the layer's state (PEFT's
    helper sets the 8-bit layer's `state.SCB`, which breaks its next matmul on CPU)."""
    kind = type(weight).__name__
    if kind == "Params4bit":
        import bitsandbytes as bnb

        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    scales = getattr(weight, "SCB", None)
    if kind == "Int8Params" and scales is not None:
        return weight.data.float() * scales.float().view(-1, 1) / 127.0
    return None


def weights_problem(saved: dict[str, Any] | None, offered: dict[str, Any] | None) -> str | None:
    """Why the offered base's weights are not the saved system's (None: they match, or either
    side has no fingerprint: a system saved before 0.4, or weights on the meta device)."""
    if not saved or not offered or saved.get("layers") != offered.get("layers"):
        return None
    a = torch.tensor(saved["samples"], dtype=torch.float64)
    b = torch.tensor(offered["samples"], dtype=torch.float64)
    if a.shape != b.shape:
        return None
    if saved.get("dtype") == offered.get("dtype") != "quantized":
        if torch.equal(a, b):
            return None
        return (f"its weights differ from the ones the system was trained on ({int((a != b).sum())} of {a.numel()} "
                f"sampled values in {len(saved['layers'])} layers, same dtype {saved.get('dtype')})")
    difference = float((a - b).norm() / a.norm().clamp_min(1e-12))
    tolerance = QUANTIZED_TOLERANCE if "quantized" in (saved.get("dtype"), offered.get("dtype")) else DTYPE_TOLERANCE
    if difference <= tolerance:
        return None
    return (f"its weights differ from the ones the system was trained on (relative difference {difference:.3g} over "
            f"{a.numel()} sampled values, tolerance {tolerance} for {saved.get('dtype')} vs {offered.get('dtype')})")


def check_base_model(saved: dict[str, Any], offered: dict[str, Any], strict_id: bool, strict_weights: bool = True) -> None:
    problems = []
    if saved.get("model_type") != offered.get("model_type"):
        problems.append(f"model_type {offered.get('model_type')!r} != saved {saved.get('model_type')!r}")
    if saved.get("target_shapes") != offered.get("target_shapes"):
        saved_shapes, offered_shapes = saved.get("target_shapes") or {}, offered.get("target_shapes") or {}
        differing = sorted(set(saved_shapes) ^ set(offered_shapes)) or sorted(
            p for p in saved_shapes if saved_shapes[p] != offered_shapes.get(p)
        )
        problems.append(f"target layers differ ({len(differing)} paths, e.g. {differing[:3]})")
    saved_id, offered_id = saved.get("name_or_path"), offered.get("name_or_path")
    if strict_id and saved_id and offered_id and saved_id != offered_id and not (os.path.isdir(saved_id) or os.path.isdir(offered_id)):
        problems.append(f"base model id {offered_id!r} != saved {saved_id!r} (pass strict_base_model_id=False if they are the same weights)")
    if strict_weights and not problems and (problem := weights_problem(saved.get("weights"), offered.get("weights"))):
        problems.append(problem + " (pass strict_base_weights=False if you mean to use these weights)")
    if problems:
        raise IncompatibleBaseModelError("The base model does not match the saved system: " + "; ".join(problems))


def load_base_model(auto_class, base_id: str, revision: str | None, base_kwargs: dict, *, token=None, endpoint=None, cache_dir=None):
    """The manifest's base model (and its tokenizer, if it has one), from a local folder.

    Which folder: the embedded default when the manifest names the canonical default id (its
    GGUF conversion, or a Hub-cache copy of the original: whichever the system was trained on,
    told by the recorded revision), a local path as is, else a Hub snapshot fetched with the
    official client from `endpoint` / `HF_ENDPOINT` (transformers would read the endpoint only at
    import). Only safetensors, JSON and tokenizer files are fetched; remote code is never run.
    """
    import warnings

    from huggingface_hub import constants as hf_constants
    from huggingface_hub import snapshot_download
    from transformers import AutoTokenizer

    from . import default_model
    from .hub import _endpoint

    kwargs = dict(base_kwargs)
    if kwargs.pop("trust_remote_code", False):
        raise ValueError("hf_conpet never runs remote code: trust_remote_code=True is refused")
    source = None
    trained_on_gguf = bool(revision) and str(revision).startswith("gguf:")
    if default_model.is_default_model(base_id) and (not revision or trained_on_gguf):
        try:  # offline by id: no Hub needed for the default model
            source = default_model.resolve_base_model(base_id, cache_dir=None, use_hub_cache=not trained_on_gguf)
        except default_model.DefaultModelUnavailable:
            if trained_on_gguf or hf_constants.is_offline_mode():
                raise
    elif os.path.isdir(base_id):
        source = base_id
    elif os.path.isabs(base_id) or base_id.startswith((".", "~")) or base_id.count("/") > 1:
        raise FileNotFoundError(
            f"The system's base model {base_id!r} is a local folder that is not on this machine: "
            "pass base_model=... (the same weights)"
        )
    if source is None:
        patterns = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.json", "vocab.txt", "merges.txt", "*.model", "chat_template.jinja", "chat_template.json"]
        where = f"{base_id}@{revision or hf_constants.DEFAULT_REVISION}"
        try:
            source = snapshot_download(base_id, revision=revision, token=token, endpoint=_endpoint(endpoint),
                                       cache_dir=cache_dir, allow_patterns=patterns)
        except Exception as err:  # noqa: BLE001 - say which base model and what to do
            raise OSError(
                f"Cannot fetch the system's base model {where} (recorded in its manifest): "
                f"{type(err).__name__}: {err}. Pass base_model=... to use a copy you have."
            ) from err
        if not any(Path(source).glob("*.safetensors")):
            raise OSError(f"The base model {where} has no safetensors weights; hf_conpet never loads "
                          "pickled weights: pass base_model=... instead")
    model = auto_class.from_pretrained(source, trust_remote_code=False, use_safetensors=True, **kwargs)
    if source != base_id:  # record the id, not this machine's cache path, when saved again
        model.config._name_or_path = base_id
        if revision and not trained_on_gguf and not getattr(model.config, "_commit_hash", None):
            model.config._commit_hash = revision
    built_from = getattr(model.config, "hf_conpet_revision", None)
    if trained_on_gguf and built_from != revision:
        warnings.warn(f"The system was trained on {base_id} from {revision}, but {built_from} is installed: "
                      "outputs may differ slightly", stacklevel=3)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, KeyError):
        tokenizer = None
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batches need one; padding is masked anyway
    return model, tokenizer
