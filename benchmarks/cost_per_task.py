"""Training cost of a late task vs an early one: dynamic replay stays flat, full replay grows.

    python benchmarks/cost_per_task.py [--tasks 10] [--steps-per-task 25] [--max-train 200]

Trains task 2 and task T of a stream of the ../shared/data tasks (one shared LoRA, stock Trainer,
the ContinualCallback's replay memory holding every earlier task) with ConPET's dynamic replay (a
fixed number of batches, half new, half old) and with full replay (the new task's rows plus every
stored old row, one epoch). Each measurement runs in a fresh process: wall time of
`Trainer.train()` and the process's peak RSS. Prints task T / task 2 for both (goal for dynamic
replay: <= 1.10 on both). The base is a small random Llama with SmolLM2's tokenizer: the ratio measures
the training loop, not the model.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hf_conpet import ConPetModelForCausalLM, method_config
from hf_conpet.callback import ContinualCallback
from hf_conpet.data import TaskStream
from hf_conpet.default_model import resolve_base_model

ORDER_A = ["yelp", "amazon", "mnli", "cb", "copa", "rte", "sst2", "boolq", "wic", "agnews"]
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "long_sequence"


def train_one_task(mode: str, position: int, args) -> dict:
    """In a fresh process: memory holds tasks 1..position-1, then task `position` is trained.

    Returns wall seconds of `Trainer.train()` and the process's peak RSS (ru_maxrss), so the
    figure covers everything the task needs: model, memory, replay set, optimizer.
    """
    import datasets

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(None))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id)
    model = ConPetModelForCausalLM(LlamaForCausalLM(config), method_config("replay", target_modules=["q_proj", "v_proj"]))
    stream = TaskStream.from_dir(args.data_dir, order=ORDER_A[:position], tokenizer=tokenizer, max_train=args.max_train)
    callback = ContinualCallback(model, stream, "replay", tokenizer=tokenizer, batch_size=args.batch_size,
                                 batches_per_task=args.steps_per_task, max_length=args.max_length, max_eval_examples=0)
    for old in list(stream)[:-1]:
        callback.memory.add_task(old.index, old.train)
    task = stream[position - 1]
    model.add_task("shared")
    if mode == "dynamic":
        dataset, sampling = callback.train_dataset(task), "sequential"
    else:  # full replay: all new rows and every stored old row, one epoch
        old_rows = [callback.memory.examples(i).cast(task.train.features) for i in callback.memory.tasks]
        dataset, sampling = datasets.concatenate_datasets([task.train, *old_rows]), "random"
    steps = -(-len(dataset) // args.batch_size)
    training_args = TrainingArguments(
        output_dir="/tmp/cost_per_task", per_device_train_batch_size=args.batch_size, max_steps=steps,
        remove_unused_columns=False, train_sampling_strategy=sampling, report_to=[], logging_strategy="no",
        save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=callback.data_collator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rows": len(dataset), "steps": steps, "task": task.name}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DATA))
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--steps-per-task", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-train", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    results = {}
    with context.Pool(1, maxtasksperchild=1) as pool:  # one fresh process per measurement
        for mode in ("dynamic", "full"):
            for position in (2, args.tasks):
                result = pool.apply(train_one_task, (mode, position, args))
                results[mode, position] = result
                print(f"  {mode:<8} task {position:>2} ({result['task']:<7}) rows {result['rows']:>5} steps {result['steps']:>4} "
                      f"{result['seconds']:7.2f} s  peak RSS {result['peak_rss_mib']:7.1f} MiB", flush=True)
    print(f"\n{args.tasks} tasks x <= {args.max_train} train rows, batch {args.batch_size}, "
          f"dynamic replay {args.steps_per_task} batches/task, torch threads {args.threads}")
    for mode in ("dynamic", "full"):
        late, early = results[mode, args.tasks], results[mode, 2]
        print(f"RATIO {mode} replay, task {args.tasks} / task 2: wall {late['seconds'] / early['seconds']:.3f}, "
              f"peak RSS {late['peak_rss_mib'] / early['peak_rss_mib']:.3f}, rows {late['rows'] / early['rows']:.2f}")


if __name__ == "__main__":
    main()
