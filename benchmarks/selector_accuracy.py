"""ConPET's selector alone, through a whole stream: routing accuracy without task ids.

    python benchmarks/selector_accuracy.py [--tasks yelp,amazon,...] [--sources hidden,embeddings]

The ConPET selector reads the *frozen* backbone (no task module), so how well it routes does not
depend on the task modules: this trains only the selector, task after task, exactly as the
ContinualCallback does (dynamic-replay batches, half new, half old), and after the last task
scores routing on each task's test prompts. After every task it also routes the test prompts of
every task seen so far and prints how much routing accuracy old tasks lose as tasks arrive (F.Ra of
the routing matrix: the part of ConPET's forgetting that frozen modules cannot prevent). It compares
the faithful feature source (last hidden state: a second forward pass) with the cheap one (pooled
input embeddings: almost free), prints the confusion matrix, and says how much of the error is
confusion between tasks that share an instruction and a label set (mnli and cb in ../shared/data:
benign when their modules agree).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_conpet import ConPetConfig, ConPetModelForCausalLM
from hf_conpet.callback import ContinualCallback
from hf_conpet.data import TaskStream
from hf_conpet.default_model import resolve_base_model
from hf_conpet.metrics import forgetting_drops, forgetting_rate
from hf_conpet.selectors import ConPetSelector, TaskEndContext

ORDER_A = "yelp,amazon,mnli,cb,copa,rte,sst2,boolq,wic,agnews"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "long_sequence"


def run(source: str, args, tokenizer, base_path):
    torch.manual_seed(args.seed)
    model = ConPetModelForCausalLM(AutoModelForCausalLM.from_pretrained(base_path), ConPetConfig(selector="conpet"), tokenizer=tokenizer)
    model.selector = ConPetSelector.for_model(model, feature_source=source, max_cached_examples=args.train_examples)
    stream = TaskStream.from_dir(args.data_dir, order=args.tasks.split(","), tokenizer=tokenizer, max_test=args.test_examples)
    callback = ContinualCallback(model, stream, "conpet", tokenizer=tokenizer, max_length=args.max_length, eval_batch_size=16)
    train_seconds = route_seconds = 0.0
    test_features = []  # per seen task: the frozen-backbone features of its test prompts (computed once)
    routing_rows = []  # routing_rows[j][i]: share of task i's test prompts routed to task i after task j
    for task in stream:
        start = time.perf_counter()
        model.add_task(task.name, labels=task.labels)
        model.freeze_tasks()
        context = TaskEndContext(
            task_index=task.index, train=task.train, validation=task.validation, memory=callback.memory,
            encode=callback.encode_prompts, batch_size=32, steps=args.steps, replay_ratio=1.0, seed=args.seed + task.index,
        )
        model.selector.end_task(model, context)
        callback.memory.add_task(task.index, task.train)
        train_seconds += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():  # what model.route(batch) computes, with the features kept for later rows
            test_features.append(torch.cat([model.selector.features(model, b["input_ids"], b["attention_mask"])
                                            for b in callback.encode_prompts(task.test)]))
            guesses = [model.selector.logits_from_features(features).argmax(dim=-1) for features in test_features]
        route_seconds += time.perf_counter() - start
        routing_rows.append([(guess == i).float().mean().item() for i, guess in enumerate(guesses)])
    n = len(stream)
    confusion = torch.zeros(n, n, dtype=torch.long)
    for i, guess in enumerate(guesses):  # the last row's routing
        confusion[i] = torch.bincount(guess, minlength=n)
    return stream.names, confusion, routing_rows, train_seconds, route_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DATA))
    parser.add_argument("--tasks", default=ORDER_A)
    parser.add_argument("--sources", default="hidden,embeddings")
    parser.add_argument("--steps", type=int, default=600, help="selector batches per task (32 rows, half new)")
    parser.add_argument("--train-examples", type=int, default=256, help="cached training prompts per task")
    parser.add_argument("--test-examples", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--benign", default="mnli,cb", help="tasks sharing instruction and labels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base_path = resolve_base_model(None)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    benign = set(args.benign.split(","))
    accuracies = {}
    for source in args.sources.split(","):
        names, confusion, routing_rows, train_s, route_s = run(source, args, tokenizer, base_path)
        total, correct = int(confusion.sum()), int(confusion.diag().sum())
        errors = total - correct
        benign_errors = sum(int(confusion[i, j]) for i in range(len(names)) for j in range(len(names))
                            if i != j and names[i] in benign and names[j] in benign)
        accuracies[source] = correct / total
        print(f"\n=== feature source: {source} (selector training {train_s:.0f} s, routing {total} test prompts {route_s:.0f} s: features once, head after every task)")
        print("rows: true task, columns: routed to")
        print(" " * 8 + "".join(f"{n[:6]:>7}" for n in names))
        for i, name in enumerate(names):
            print(f"{name[:7]:<8}" + "".join(f"{int(v):>7}" for v in confusion[i]) + f"   {confusion[i, i] / confusion[i].sum():.2f}")
        print(f"selector accuracy {correct / total:.4f}; errors {errors}, of which between {sorted(benign)}: "
              f"{benign_errors} ({benign_errors / max(errors, 1):.0%}); accuracy counting those as right: "
              f"{(correct + benign_errors) / total:.4f}")
        if len(names) > 1:
            drops = forgetting_drops(routing_rows)
            print(f"routing forgetting (F.Ra of the routing matrix) {forgetting_rate(routing_rows) * 100:.2f} points; "
                  "per old task: " + ", ".join(f"{n} {d * 100:+.0f}" for n, d in zip(names, drops)))
    if {"hidden", "embeddings"} <= set(accuracies):
        print(f"\nRATIO cheap (embeddings) - faithful (hidden) selector accuracy: "
              f"{(accuracies['embeddings'] - accuracies['hidden']) * 100:+.1f} points (goal: within 2)")
    print(f"budget: {args.tasks}; {args.steps} selector steps/task, {args.train_examples} cached prompts/task, "
          f"first {args.test_examples} test prompts/task")


if __name__ == "__main__":
    main()
