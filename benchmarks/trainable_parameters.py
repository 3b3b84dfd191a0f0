"""Trainable and stored parameters of every method on the default model, and ConPET's ">3,000x".

    python benchmarks/trainable_parameters.py [--tasks 10] [--r 8 --targets q_proj,v_proj] [--base default|same-shape|tiny]

For each method the system is built as `ContinualTrainer` builds it (`method_config`, then
`attach_method`), grown to `--tasks` tasks, and counted while the last task trains: the parameters
that get a gradient in the task's training (the live LoRA), the selector's parameters (trained
after each task by ConPET, with it by SAPT; the analytic router has none, only statistics), and
the LoRA weights the saved system holds (every task's module). No training: the counts are
shapes. Then ConPET's claim by formula: LLaMA-7B (32 layers, hidden 4096, 6.74 B parameters) with
its PET of r=4 on q and k, against full fine-tuning.
"""

from __future__ import annotations

import argparse

from _common import load_benchmark_base

from hf_conpet import ConPetModelForCausalLM
from hf_conpet.methods import METHODS, MULTITASK_MODULE_NAME, SHARED_MODULE_NAME, method_config
from hf_conpet.trainer import attach_method

LLAMA_7B = {"parameters": 6_738_415_616, "layers": 32, "hidden": 4096}  # q and k are both 4096 x 4096


def lora_parameters(r: int, layers: int, shapes: list[tuple[int, int]]) -> int:
    """A LoRA of rank r on each (in, out) projection of every layer: r * (in + out) per projection."""
    return layers * sum(r * (fan_in + fan_out) for fan_in, fan_out in shapes)


def count(method: str, num_tasks: int, base_kind: str, lora: dict) -> dict[str, int]:
    base, _ = load_benchmark_base(base_kind)
    model = ConPetModelForCausalLM(base, method_config(method, **lora))
    attach_method(model, method)
    spec = METHODS[method]
    if spec.module_per_task:
        for task in range(num_tasks):
            if task:
                model.freeze_tasks()
            model.add_task(f"task{task}")
    else:
        model.add_task(MULTITASK_MODULE_NAME if spec.train_data == "all" else SHARED_MODULE_NAME)
    named = dict(model.named_parameters())
    trainable = sum(p.numel() for name, p in named.items() if p.requires_grad and not name.startswith("selector."))
    base_total = sum(p.numel() for name, p in model.get_base_model().named_parameters() if "lora" not in name)
    adapters = sum(t.numel() for name, t in model.state_dict().items() if "lora" in name and not name.startswith("selector."))
    # the selector trains in its own phase after each task (ConPET, analytic), or with the task (SAPT)
    selector = sum(p.numel() for p in model.selector.parameters()) if model.selector is not None else 0
    return {"trainable": trainable, "selector": selector, "stored": adapters, "base": base_total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--base", default="default", choices=["default", "same-shape", "tiny"])
    parser.add_argument("--methods", default="seq_lora,ewc,lwf,replay,ewc_replay,lwf_replay,multitask,conpet,"
                                             "conpet_analytic,sapt,olora")
    parser.add_argument("--r", type=int, default=None, help="LoRA rank (default: ConPetConfig's, ConPET's 4)")
    parser.add_argument("--targets", default=None, help="e.g. q_proj,v_proj (default: the query and key projections)")
    args = parser.parse_args()

    lora = {"r": args.r} if args.r else {}
    if args.targets:
        lora["target_modules"] = args.targets.split(",")
    shown = method_config("conpet", **lora)
    print(f"{args.tasks} tasks, LoRA r={shown.r}, alpha {shown.lora_alpha}, targets "
          f"{shown.target_modules or 'the architecture default (query and key projections)'}")
    print(f"{'method':<16} {'LoRA trained':>13} {'selector':>10} {'LoRA stored':>12} {'base / LoRA trained':>20}")
    for method in args.methods.split(","):
        counts = count(method, args.tasks, args.base, lora)
        print(f"{method:<16} {counts['trainable']:>13,} {counts['selector']:>10,} {counts['stored']:>12,} "
              f"{counts['base'] / counts['trainable']:>19,.0f}x")

    hidden, layers = LLAMA_7B["hidden"], LLAMA_7B["layers"]
    pet = lora_parameters(4, layers, [(hidden, hidden), (hidden, hidden)])
    print(f"\nLLaMA-7B, ConPET's PET (LoRA r=4 on q and k): {pet:,} trainable of {LLAMA_7B['parameters']:,}: "
          f"full fine-tuning trains {LLAMA_7B['parameters'] / pet:,.0f}x more")


if __name__ == "__main__":
    main()
