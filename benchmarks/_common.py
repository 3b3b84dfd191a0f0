"""Shared by the benchmark scripts: the base model they measure on and an interleaved timer."""

from __future__ import annotations

import statistics
import time

import torch


def load_benchmark_base(kind: str = "default"):
    """SmolLM2-135M (the offline default) when installed, else a random Llama of the same shape."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if kind == "default":
        try:
            from hf_conpet.default_model import resolve_base_model

            path = resolve_base_model(None)
            return AutoModelForCausalLM.from_pretrained(path).eval(), "SmolLM2-135M-Instruct (offline default)"
        except Exception as error:  # noqa: BLE001 - any failure falls back to the same-shape model
            print(f"(default model unavailable: {error}; using a random Llama of SmolLM2-135M's shape)")
    torch.manual_seed(0)
    if kind == "tiny":  # smoke-testing the script itself, not a measurement
        config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2)
        return LlamaForCausalLM(config).eval(), "tiny random Llama (smoke test)"
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval(), "random Llama, SmolLM2-135M shape"


def interleaved_medians(candidates: dict, repeats: int = 7, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each candidate, runs interleaved so machine noise hits all alike."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    samples = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}
