"""What routing costs on the user's path, against plain PEFT LoRA with the same r and targets.

    python benchmarks/step_cost.py [--base default|random|tiny] [--dtypes fp32,bf16] [--repeats 5]

Two ratios, each measured in this one run with the two systems' calls interleaved (these machines
are noisy), in every dtype asked for (the base cast to it; adapters in fp32 under a half-precision
base, PEFT's default and ours):
  training step: forward + backward + AdamW, batch 8 x 64, 10 tasks registered and the 10th being
  trained (hf_conpet) / the same step on one PEFT LoRA                      (goal <= 1.05)
  generation: greedy, 32 new tokens for 16 prompts, each routed to its own one of 16 frozen tasks
  (hf_conpet) / one PEFT LoRA answering all 16                              (goal <= 1.10)
On a GPU add `--train-batch 64 --tasks 100` for the issue's GPU figures, and say which card ran them.
"""

from __future__ import annotations

import argparse
import copy

import torch
from peft import LoraConfig, get_peft_model

from _common import interleaved_medians, load_benchmark_base
from hf_conpet import ConPetConfig, ConPetModelForCausalLM

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def conpet_system(base, n_tasks: int, args) -> ConPetModelForCausalLM:
    """`n_tasks` registered; the last one live (trainable) when training, all frozen otherwise."""
    model = ConPetModelForCausalLM(copy.deepcopy(base), ConPetConfig(selector="none", r=args.r, lora_alpha=2 * args.r,
                                                                    target_modules=args.targets.split(",")))
    for index in range(n_tasks):
        model.add_task(f"task{index}")
        with torch.no_grad():
            for parameter in model.trainable_parameters().values():
                parameter.normal_(0, 0.02)
    return model


def peft_system(base, args):
    config = LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules=args.targets.split(","), init_lora_weights=False)
    return get_peft_model(copy.deepcopy(base), config)


def training_step(model, batch, task_ids=None):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    routing = {} if task_ids is None else {"task_ids": task_ids}

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(**batch, labels=batch["input_ids"], **routing).loss.backward()
        optimizer.step()
    return step


def generation(model, prompts, pad_id, task_ids=None):
    routing = {} if task_ids is None else {"task_ids": task_ids}

    def generate():
        with torch.no_grad():
            out = model.generate(**prompts, **routing, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=pad_id)
        assert out.shape[1] == prompts["input_ids"].shape[1] + 32
    return generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", choices=["default", "random", "tiny"], default="default")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=10, help="tasks registered for the training step")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--gen-prompts", type=int, default=16, help="prompts (and tasks) in the generation batch")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--targets", default="q_proj,v_proj")
    args = parser.parse_args()
    base, base_name = load_benchmark_base(args.base)
    vocab = base.config.vocab_size
    torch.manual_seed(0)
    ids = torch.randint(10, vocab, (args.train_batch, args.length))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    prompt_ids = torch.randint(10, vocab, (args.gen_prompts, 32))
    prompts = {"input_ids": prompt_ids, "attention_mask": torch.ones_like(prompt_ids)}
    ratios = []
    for name in args.dtypes.split(","):
        typed = copy.deepcopy(base).to(DTYPES[name])
        trained = conpet_system(typed, args.tasks, args).train()  # the last task is live
        peft = peft_system(typed, args).train()
        train = interleaved_medians({
            "conpet": training_step(trained, batch, torch.full((args.train_batch,), args.tasks - 1)),
            "peft": training_step(peft, batch),
        }, repeats=args.repeats)
        del trained
        served = conpet_system(typed, args.gen_prompts, args)
        served.freeze_tasks()
        served.eval()
        peft.eval()
        generate = interleaved_medians({
            "conpet": generation(served, prompts, 0, torch.arange(args.gen_prompts)),
            "peft": generation(peft, prompts, 0),
        }, repeats=args.repeats)
        print(f"{name}: training step {train['conpet']:.3f} s vs PEFT {train['peft']:.3f} s; "
              f"generation {generate['conpet']:.3f} s vs PEFT {generate['peft']:.3f} s")
        ratios.append((name, train["conpet"] / train["peft"], generate["conpet"] / generate["peft"]))
        del served, peft, typed
    print(f"\nbase: {base_name}; LoRA r={args.r} on {args.targets}; threads {torch.get_num_threads()}; "
          f"median of {args.repeats} interleaved runs")
    for name, train_ratio, generate_ratio in ratios:
        print(f"RATIO {name} training step ({args.tasks} tasks registered, training the last, batch "
              f"{args.train_batch} x {args.length}) / plain PEFT LoRA: {train_ratio:.3f} (goal <= 1.05)")
        print(f"RATIO {name} generation ({args.gen_prompts} prompts routed to {args.gen_prompts} tasks, 32 new tokens) "
              f"/ plain PEFT LoRA: {generate_ratio:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
