"""The routing selectors alone, through a whole stream: routing accuracy without task ids.

    python benchmarks/selector_accuracy.py [--tasks yelp,amazon,...] [--selectors conpet,analytic]
                                           [--sources hidden,embeddings]

ConPET's selectors read the *frozen* backbone (no task module), so how well they route does not
depend on the task modules: this trains only the selector, task after task, exactly as the
ContinualCallback does, and after the last task scores routing on each task's test prompts.
`conpet` is the replay-trained classifier (dynamic-replay batches, half new, half old);
`analytic` is the closed-form ridge router (no replay, no stored example). After every task it
also routes the test prompts of every task seen so far and prints how much routing accuracy old
tasks lose as tasks arrive (F.Ra of the routing matrix: the part of ConPET's forgetting that frozen
modules cannot prevent). It compares the faithful feature source (last hidden state: a second
forward pass) with the cheap one (pooled input embeddings: almost free), prints the confusion
matrix, the selector's time per task and the memory it keeps, and says how much of the error is
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
from hf_conpet.selectors import AnalyticSelector, ConPetSelector, TaskEndContext

ORDER_A = "yelp,amazon,mnli,cb,copa,rte,sst2,boolq,wic,agnews"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "long_sequence"


def build_selector(kind: str, source: str, model, args):
    if kind == "conpet":
        return ConPetSelector.for_model(model, feature_source=source, max_cached_examples=args.train_examples)
    return AnalyticSelector.for_model(model, feature_source=source, feature_pooling=args.analytic_pooling,
                                      expansion_dim=args.expansion_dim, max_examples_per_task=args.analytic_examples,
                                      balance_tasks=not args.no_balance)


def kept_bytes(selector) -> int:
    """What the selector keeps between tasks: its saved state, plus ConPET's cached training features
    (the replay memory of training rows that ConPET's selector also needs is not counted)."""
    state = sum(t.numel() * t.element_size() for t in selector.state_dict().values())
    cache = getattr(selector, "_feature_cache", {})
    return state + sum(t.numel() * t.element_size() for t in cache.values())


def run(kind: str, source: str, args, tokenizer, base_path):
    torch.manual_seed(args.seed)
    model = ConPetModelForCausalLM(AutoModelForCausalLM.from_pretrained(base_path), ConPetConfig(selector=kind), tokenizer=tokenizer)
    model.selector = build_selector(kind, source, model, args)
    stream = TaskStream.from_dir(args.data_dir, order=args.tasks.split(","), tokenizer=tokenizer, max_test=args.test_examples)
    method = "conpet" if kind == "conpet" else "conpet_analytic"
    callback = ContinualCallback(model, stream, method, tokenizer=tokenizer, max_length=args.max_length, eval_batch_size=16)
    task_seconds = []  # selector time per task: its features and its update
    route_seconds = 0.0
    test_features = []  # per seen task: the frozen-backbone features of its test prompts (computed once)
    routing_rows = []  # routing_rows[j][i]: share of task i's test prompts routed to task i after task j
    for task in stream:
        model.add_task(task.name, labels=task.labels)
        model.freeze_tasks()
        start = time.perf_counter()
        context = TaskEndContext(
            task_index=task.index, train=task.train, validation=task.validation, memory=callback.memory,
            features=callback.selector_features, batch_size=32, steps=args.steps, replay_ratio=1.0, seed=args.seed + task.index,
        )
        model.selector.end_task(context)
        task_seconds.append(time.perf_counter() - start)
        callback.memory.add_task(task.index, task.train)
        start = time.perf_counter()
        with torch.no_grad():  # what model.route(batch) computes, with the features kept for later rows
            test_features.append(callback.selector_features(task.test))
            guesses = [model.selector.task_probabilities(features).argmax(dim=-1) for features in test_features]
        route_seconds += time.perf_counter() - start
        routing_rows.append([(guess == i).float().mean().item() for i, guess in enumerate(guesses)])
    n = len(stream)
    confusion = torch.zeros(n, n, dtype=torch.long)
    for i, guess in enumerate(guesses):  # the last row's routing
        confusion[i] = torch.bincount(guess.cpu(), minlength=n)
    return stream.names, confusion, routing_rows, task_seconds, route_seconds, kept_bytes(model.selector)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DATA))
    parser.add_argument("--tasks", default=ORDER_A)
    parser.add_argument("--selectors", default="conpet,analytic", help="conpet (replay-trained), analytic (closed form)")
    parser.add_argument("--sources", default="hidden,embeddings")
    parser.add_argument("--expansion-dim", type=int, default=0, help="analytic: random ReLU features added")
    parser.add_argument("--analytic-pooling", default="last", choices=["mean", "max", "last"],
                        help="analytic: how prompt tokens are pooled (default last: the last token's state, conpet_analytic's)")
    parser.add_argument("--no-balance", action="store_true", help="analytic: weigh tasks by their prompt count")
    parser.add_argument("--analytic-examples", type=int, default=None, help="analytic: training prompts per task (default all)")
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
    for kind in args.selectors.split(","):
        for source in args.sources.split(","):
            names, confusion, routing_rows, task_s, route_s, kept = run(kind, source, args, tokenizer, base_path)
            total, correct = int(confusion.sum()), int(confusion.diag().sum())
            errors = total - correct
            benign_errors = sum(int(confusion[i, j]) for i in range(len(names)) for j in range(len(names))
                                if i != j and names[i] in benign and names[j] in benign)
            accuracies[kind, source] = correct / total
            print(f"\n=== selector {kind}, feature source {source}: selector time per task {sum(task_s) / len(task_s):.1f} s "
                  f"(first {task_s[0]:.1f}, last {task_s[-1]:.1f}; features and update), routing {total} test prompts "
                  f"{route_s:.0f} s (features once, head after every task); kept between tasks {kept / 2**20:.2f} MiB")
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
    for kind in args.selectors.split(","):
        if (kind, "hidden") in accuracies and (kind, "embeddings") in accuracies:
            print(f"\nRATIO {kind}: cheap (embeddings) - faithful (hidden) selector accuracy: "
                  f"{(accuracies[kind, 'embeddings'] - accuracies[kind, 'hidden']) * 100:+.1f} points (goal: within 2)")
    for source in args.sources.split(","):
        if ("conpet", source) in accuracies and ("analytic", source) in accuracies:
            print(f"RATIO {source}: analytic - replay-trained selector accuracy: "
                  f"{(accuracies['analytic', source] - accuracies['conpet', source]) * 100:+.1f} points")
    print(f"budget: {args.tasks}; conpet: {args.steps} selector steps/task, {args.train_examples} cached prompts/task; "
          f"analytic: {args.analytic_examples or 'all'} training prompts/task, {args.analytic_pooling} pooling, expansion {args.expansion_dim}; "
          f"first {args.test_examples} test prompts/task, max_length {args.max_length}")


if __name__ == "__main__":
    main()
