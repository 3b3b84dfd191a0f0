"""Cost of routing a mixed batch through task-stacked LoRAs, against one plain PEFT LoRA.

Also the cost of routing *without* task ids (issue "SAPT"): selector + routed forward, for SAPT's
embedding query, ConPET's classifier on pooled input embeddings (cheap path) and ConPET's
classifier on the frozen backbone's last hidden state (faithful cost: a second forward).

    python benchmarks/routing_overhead.py [--base random] [--repeats 7] [--batch 16] [--length 64]

Prints the median forward time of each setting (all measured in this one run, interleaved) and
the ratios the foundation issue sets goals for:
  mixed batch of 16 distinct tasks / single-task forward      (goal <= 1.05)
  50 tasks registered / 2 tasks registered, same top-1 routing (goal <= 1.05)
  selector + routed forward, no task ids / single-LoRA forward (cheap path goal <= 1.15)
PEFT's own mixed-batch path (adapter_names, splits the batch per adapter) is printed beside it.
"""

from __future__ import annotations

import argparse
import copy

import torch
from peft import LoraConfig, get_peft_model

from _common import interleaved_medians, load_benchmark_base
from hf_conpet import ConPetConfig, ConPetModelForCausalLM
from hf_conpet.selectors import ConPetSelector, SaptSelector


def conpet_with_tasks(base, n_tasks: int, r: int, targets, selector=None):
    model = ConPetModelForCausalLM(copy.deepcopy(base), ConPetConfig(selector="none", r=r, target_modules=targets))
    if selector is not None:
        model.selector = selector(model)
    for index in range(n_tasks):
        model.add_task(f"task{index}")
        with torch.no_grad():
            for parameter in model.trainable_parameters().values():
                parameter.normal_(0, 0.02)
    model.freeze_tasks()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", choices=["default", "random", "tiny"], default="default")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--r", type=int, default=4)
    parser.add_argument("--targets", default="q_proj,k_proj")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    targets = args.targets.split(",")

    base, base_name = load_benchmark_base(args.base)
    torch.manual_seed(0)
    input_ids = torch.randint(10, base.config.vocab_size, (args.batch, args.length))
    attention_mask = torch.ones_like(input_ids)

    peft_single = get_peft_model(copy.deepcopy(base), LoraConfig(r=args.r, lora_alpha=8, target_modules=targets, init_lora_weights=False)).eval()
    peft_mixed = get_peft_model(copy.deepcopy(base), LoraConfig(r=args.r, lora_alpha=8, target_modules=targets, init_lora_weights=False), adapter_name="a0")
    for index in range(1, args.batch):
        peft_mixed.add_adapter(f"a{index}", LoraConfig(r=args.r, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    peft_mixed.eval()
    peft_names = [f"a{index}" for index in range(args.batch)]

    two = conpet_with_tasks(base, 2, args.r, targets)
    sixteen = conpet_with_tasks(base, args.batch, args.r, targets)
    fifty = conpet_with_tasks(base, 50, args.r, targets)
    sapt = conpet_with_tasks(base, args.batch, args.r, targets, selector=lambda m: SaptSelector.for_model(m))
    conpet_cheap = conpet_with_tasks(base, args.batch, args.r, targets, selector=lambda m: ConPetSelector.for_model(m, feature_source="embeddings"))
    conpet_full = conpet_with_tasks(base, args.batch, args.r, targets, selector=lambda m: ConPetSelector.for_model(m, feature_source="hidden"))
    print("models built", flush=True)
    one_task = torch.zeros(args.batch, dtype=torch.long)
    distinct = torch.arange(args.batch)
    two_way = torch.arange(args.batch) % 2
    soft2 = torch.softmax(torch.randn(args.batch, 2), -1)
    soft50 = torch.softmax(torch.randn(args.batch, 50), -1)

    candidates = {
        "base model, no LoRA": lambda: base(input_ids=input_ids, attention_mask=attention_mask),
        "PEFT one LoRA": lambda: peft_single(input_ids=input_ids, attention_mask=attention_mask),
        "PEFT mixed batch, 16 adapters (task ids given)": lambda: peft_mixed(input_ids=input_ids, attention_mask=attention_mask, adapter_names=peft_names),
        "hf_conpet single task (16 registered)": lambda: sixteen(input_ids=input_ids, attention_mask=attention_mask, task_ids=one_task),
        "hf_conpet mixed batch, 16 distinct tasks": lambda: sixteen(input_ids=input_ids, attention_mask=attention_mask, task_ids=distinct),
        "hf_conpet top-1 over 2 tasks, 2 registered": lambda: two(input_ids=input_ids, attention_mask=attention_mask, task_ids=two_way),
        "hf_conpet top-1 over 2 tasks, 50 registered": lambda: fifty(input_ids=input_ids, attention_mask=attention_mask, task_ids=two_way),
        "hf_conpet soft over all, 2 registered": lambda: two(input_ids=input_ids, attention_mask=attention_mask, routing_weights=soft2),
        "hf_conpet soft over all, 50 registered": lambda: fifty(input_ids=input_ids, attention_mask=attention_mask, routing_weights=soft50),
        "no task id: SAPT selector + soft routing (16 tasks)": lambda: sapt(input_ids=input_ids, attention_mask=attention_mask),
        "no task id: ConPET selector on embeddings + top-1": lambda: conpet_cheap(input_ids=input_ids, attention_mask=attention_mask),
        "no task id: ConPET selector on last hidden + top-1": lambda: conpet_full(input_ids=input_ids, attention_mask=attention_mask),
    }
    times = interleaved_medians(candidates, repeats=args.repeats)

    print(f"base: {base_name}; batch {args.batch} x {args.length} tokens; LoRA r={args.r} on {targets}; "
          f"median of {args.repeats} interleaved runs; torch threads {torch.get_num_threads()}")
    for name, seconds in times.items():
        print(f"  {name:<50} {seconds * 1000:8.1f} ms")
    ratios = {
        "mixed 16 tasks / hf_conpet single task (goal <= 1.05)": times["hf_conpet mixed batch, 16 distinct tasks"] / times["hf_conpet single task (16 registered)"],
        "mixed 16 tasks / PEFT one LoRA (goal <= 1.05)": times["hf_conpet mixed batch, 16 distinct tasks"] / times["PEFT one LoRA"],
        "PEFT mixed 16 adapters / PEFT one LoRA (reference)": times["PEFT mixed batch, 16 adapters (task ids given)"] / times["PEFT one LoRA"],
        "top-1: 50 registered / 2 registered (goal <= 1.05)": times["hf_conpet top-1 over 2 tasks, 50 registered"] / times["hf_conpet top-1 over 2 tasks, 2 registered"],
        "soft over all: 50 registered / 2 registered (grows with T by design)": times["hf_conpet soft over all, 50 registered"] / times["hf_conpet soft over all, 2 registered"],
        "no task id, SAPT selector + routed / PEFT one LoRA (goal <= 1.15)": times["no task id: SAPT selector + soft routing (16 tasks)"] / times["PEFT one LoRA"],
        "no task id, ConPET embeddings selector + routed / PEFT one LoRA (goal <= 1.15)": times["no task id: ConPET selector on embeddings + top-1"] / times["PEFT one LoRA"],
        "no task id, ConPET hidden-state selector + routed / PEFT one LoRA (faithful, ~2x)": times["no task id: ConPET selector on last hidden + top-1"] / times["PEFT one LoRA"],
    }
    for name, ratio in ratios.items():
        print(f"RATIO {name}: {ratio:.3f}")


if __name__ == "__main__":
    main()
