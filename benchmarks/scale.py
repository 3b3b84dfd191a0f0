"""How the system scales with the number of tasks N: growth, save/load, routed compute, memory.

    python benchmarks/scale.py [--sizes 10,100,1000] [--repeats 5]

On a small random Llama (4 layers, hidden 256, LoRA r=8 on q/v; synthetic tasks: cost, not accuracy),
each N runs in a fresh process (peak RSS is per process) and prints, per N:
  add + freeze time per task, save and load time per module, checkpoint bytes, peak RSS;
  a training step (batch 8 x 64, the N-th task live) with N tasks / with 2, interleaved in that process;
  routed greedy generation (16 prompts to 16 different tasks, 16 new tokens) with N tasks / with 2;
  SAPT's dense mixture over N tasks / over 2 (one forward; its cost grows with N by design);
  the analytic router's end-of-task update at N (statistics of 256 prompts, then the solve), and
  ConPET's replay-trained selector's (600 steps of 32 cached features, half new, half from N - 1 old tasks),
  with the replay memory and the selector's cache under the default memory budget.
Then the ratios the scaling issue sets goals for, across N.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from _common import interleaved_medians
from hf_conpet import ConPetConfig, ConPetModelForCausalLM
from hf_conpet.memory import DEFAULT_MEMORY_BUDGET, ReplayMemory
from hf_conpet.selectors import AnalyticSelector, ConPetSelector, TaskEndContext


def small_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def system(base, n_tasks: int, live: bool = False) -> ConPetModelForCausalLM:
    model = ConPetModelForCausalLM(copy.deepcopy(base), ConPetConfig(selector="none", r=8, target_modules=["q_proj", "v_proj"]))
    for index in range(n_tasks + int(live)):
        model.add_task(f"t{index}")
        with torch.no_grad():
            for parameter in model.trainable_parameters().values():
                parameter.normal_(0, 0.02)
    if not live:
        model.freeze_tasks()
    return model


def measure(n: int, repeats: int) -> dict:
    base = small_llama()
    figures = {"N": n}
    start = time.perf_counter()
    grown = system(base, n)
    figures["add_ms_per_task"] = 1000 * (time.perf_counter() - start) / n
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        grown.save_pretrained(Path(folder) / "system")
        figures["save_ms_per_module"] = 1000 * (time.perf_counter() - start) / n
        figures["checkpoint_bytes"] = sum(p.stat().st_size for p in (Path(folder) / "system").rglob("*") if p.is_file())
        start = time.perf_counter()
        ConPetModelForCausalLM.from_pretrained(Path(folder) / "system", base_model=copy.deepcopy(base))
        figures["load_ms_per_module"] = 1000 * (time.perf_counter() - start) / n
    del grown

    torch.manual_seed(1)
    ids = torch.randint(10, 1000, (8, 64))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    training = {}
    for name, count in (("N", n), ("2", 2)):
        model = system(base, count - 1, live=True).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        task_ids = torch.full((8,), count - 1)

        def step(model=model, optimizer=optimizer, task_ids=task_ids):
            optimizer.zero_grad(set_to_none=True)
            model(**batch, task_ids=task_ids).loss.backward()
            optimizer.step()
        training[name] = step
    train = interleaved_medians(training, repeats=repeats)
    figures["train_step_ratio"] = train["N"] / train["2"]

    prompts = torch.randint(10, 1000, (16, 24))
    generating, routed = {}, {}
    for name, count in (("N", n), ("2", 2)):
        model = system(base, count).eval()
        task_ids = torch.arange(16) % count  # 16 different tasks where there are that many

        def generate(model=model, task_ids=task_ids):
            with torch.no_grad():
                model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), task_ids=task_ids,
                               max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)

        def dense(model=model, count=count):
            with torch.no_grad():
                model(input_ids=prompts, routing_weights=torch.full((16, count), 1.0 / count))
        generating[name], routed[name] = generate, dense
    gen = interleaved_medians(generating, repeats=repeats)
    figures["generation_ratio"] = gen["N"] / gen["2"]
    mixture = interleaved_medians(routed, repeats=repeats)
    figures["sapt_dense_forward_ratio"] = mixture["N"] / mixture["2"]

    selector = AnalyticSelector(hidden_size=256)
    generator = torch.Generator().manual_seed(2)
    for index in range(n - 1):  # statistics of N - 1 earlier tasks (synthetic features)
        selector.add_task()
        selector.add_statistics(index, torch.randn(64, 256, generator=generator))
    selector.add_task()
    features = torch.randn(256, 256, generator=generator)
    start = time.perf_counter()
    selector.end_task(TaskEndContext(task_index=n - 1, train=list(range(256)), validation=list(range(32)), memory=None,
                                     features=lambda rows: features[: len(rows)], batch_size=32, steps=0,
                                     replay_ratio=1.0, seed=0))
    figures["analytic_update_s"] = time.perf_counter() - start
    figures["conpet_selector_s"], held = conpet_selector_seconds(n)
    figures.update(held)
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def conpet_selector_seconds(n: int) -> tuple[float, dict]:
    """ConPET's selector update for task N with N - 1 old tasks already learned and cached (synthetic
    features), under the default memory budget; and what the memory and the cache then hold."""
    import datasets

    from hf_conpet.memory import DEFAULT_MEMORY_BUDGET, priority_order

    selector = ConPetSelector(hidden_size=256, feature_source="embeddings")
    memory = ReplayMemory("all", budget=DEFAULT_MEMORY_BUDGET)
    rows = datasets.Dataset.from_dict({"id": list(range(256)), "input": [f"a training prompt of some length {k}" for k in range(256)]})
    generator = torch.Generator().manual_seed(3)
    start = time.perf_counter()
    for index in range(n - 1):
        memory.add_task(index, rows)
    memory_add_s = time.perf_counter() - start
    for index in range(n):
        selector.add_task()
        if index < n - 1:  # the selector cached each old task's first rows in priority order
            kept = memory.num_examples(index)
            selector._subset_cache[index] = rows.select(priority_order(len(rows), index)[:kept])
            selector._feature_cache[index] = torch.randn(kept, 256, generator=generator)
    features = torch.randn(256, 256, generator=generator)
    context = TaskEndContext(task_index=n - 1, train=rows, validation=rows.select(range(32)), memory=memory,
                             features=lambda subset: features[: len(subset)], batch_size=32, steps=600,
                             replay_ratio=1.0, seed=0)
    start = time.perf_counter()
    selector.end_task(context)
    seconds = time.perf_counter() - start
    cache_bytes = sum(t.numel() * t.element_size() for t in selector._feature_cache.values())
    return seconds, {"memory_rows": len(memory), "memory_add_s_total": memory_add_s, "selector_cache_mib": cache_bytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process measuring one N
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeats)))
        return
    results = {}
    for n in (int(size) for size in args.sizes.split(",")):
        child = subprocess.run([sys.executable, __file__, "--one", str(n), "--repeats", str(args.repeats)],
                               capture_output=True, text=True, check=True)
        results[n] = json.loads(child.stdout.strip().splitlines()[-1])
        print(json.dumps(results[n]), flush=True)
    sizes = sorted(results)
    print(f"\nsmall random Llama (4 layers, hidden 256, r=8 on q/v), torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved runs within each N's process")
    print(f"{'N':>6} {'add ms/task':>12} {'save ms/mod':>12} {'load ms/mod':>12} {'ckpt MiB':>9} {'RSS MiB':>8} "
          f"{'train N/2':>10} {'gen N/2':>8} {'SAPT N/2':>9} {'analytic s':>11} {'ConPET sel s':>13}")
    for n in sizes:
        r = results[n]
        print(f"{n:>6} {r['add_ms_per_task']:>12.2f} {r['save_ms_per_module']:>12.2f} {r['load_ms_per_module']:>12.2f} "
              f"{r['checkpoint_bytes'] / 2**20:>9.1f} {r['peak_rss_mib']:>8.0f} {r['train_step_ratio']:>10.3f} "
              f"{r['generation_ratio']:>8.3f} {r['sapt_dense_forward_ratio']:>9.3f} {r['analytic_update_s']:>11.3f} "
              f"{r['conpet_selector_s']:>13.2f}")
    largest = sizes[-1]
    print(f"\nRATIO train step at N={largest} / N=2: {results[largest]['train_step_ratio']:.3f} (goal <= 1.10)")
    print(f"RATIO routed generation at N={largest} / N=2: {results[largest]['generation_ratio']:.3f} (goal <= 1.10)")
    if len(sizes) > 1:
        previous = sizes[-2]
        for key in ("add_ms_per_task", "load_ms_per_module"):
            print(f"RATIO {key} at N={largest} / N={previous}: {results[largest][key] / results[previous][key]:.3f} (goal <= 1.5)")
        print(f"RATIO peak RSS at N={largest} / N={previous}: {results[largest]['peak_rss_mib'] / results[previous]['peak_rss_mib']:.3f} "
              "(goal <= 1.10; replay memory and ConPET's cache under the default budget, plus the LoRA stacks themselves)")
        for n in sizes:
            r = results[n]
            print(f"N={n}: replay memory {r['memory_rows']} rows (budget {DEFAULT_MEMORY_BUDGET}), ConPET selector cache "
                  f"{r['selector_cache_mib']:.1f} MiB, memory.add_task {1000 * r['memory_add_s_total'] / max(n - 1, 1):.2f} ms per task")
        print(f"RATIO analytic router update at N={largest} / N={sizes[0]}: "
              f"{results[largest]['analytic_update_s'] / results[sizes[0]]['analytic_update_s']:.3f} (goal <= 1.5)")
        print(f"RATIO ConPET selector update at N={largest} / N={sizes[0]}: "
              f"{results[largest]['conpet_selector_s'] / results[sizes[0]]['conpet_selector_s']:.3f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
