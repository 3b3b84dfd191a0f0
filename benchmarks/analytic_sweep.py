"""The analytic router's settings, swept on one set of frozen features (computed once per source).

    python benchmarks/analytic_sweep.py [--sources embeddings,hidden:-1,hidden:15,last:-1] [--expansion-dims 0,2048]

The analytic router only ever sees the frozen backbone's prompt features, so every setting can be
scored on the same features: this computes each task's train / validation / test features once
per feature source (as the ContinualCallback does), then, for each expansion width, feeds the
tasks one after another to an `AnalyticSelector` (its `add_statistics` and `solve`, what its
`end_task` runs) and routes the test prompts of every task seen so far after each task. It prints
final routing accuracy, routing F.Ra (the issue-19 goal: <= 0.5 points), the per-task drops, what
the selector keeps (its saved statistics), and the solve time per task.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_conpet import ConPetConfig, ConPetModelForCausalLM
from hf_conpet.callback import ContinualCallback
from hf_conpet.data import TaskStream
from hf_conpet.default_model import resolve_base_model
from hf_conpet.features import pool_prompt
from hf_conpet.metrics import forgetting_drops, forgetting_rate
from hf_conpet.selectors import AnalyticSelector

from selector_accuracy import DATA, ORDER_A


def stream_features(sources: list[str], args, tokenizer, base_path):
    """{source: {task: (train, validation, test) features}} of the frozen backbone, every source
    from one forward pass per batch. A source is `embeddings`, `hidden:<layer>` (mean-pooled) or
    `last:<layer>` (the hidden state at the prompt's last token)."""
    model = ConPetModelForCausalLM(AutoModelForCausalLM.from_pretrained(base_path), ConPetConfig(selector="analytic"),
                                   tokenizer=tokenizer)
    model.selector = AnalyticSelector.for_model(model, feature_source="embeddings")
    stream = TaskStream.from_dir(args.data_dir, order=args.tasks.split(","), tokenizer=tokenizer, max_test=args.test_examples,
                                 max_train=args.train_examples)
    callback = ContinualCallback(model, stream, "conpet_analytic", tokenizer=tokenizer, max_length=args.max_length,
                                 eval_batch_size=16)
    backbone = model.get_base_model()

    def batch_features(batch) -> dict[str, torch.Tensor]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = {}
        hidden_states = None
        if any(source != "embeddings" for source in sources):
            with model.routing.use(None):
                hidden_states = backbone.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        last = mask.shape[1] - 1 - mask.flip(1).float().argmax(dim=1)  # the last attended position
        for source in sources:
            if source == "embeddings":
                out[source] = pool_prompt(backbone.get_input_embeddings()(ids).float(), mask)
            else:
                kind, layer = source.split(":")
                hidden = hidden_states[int(layer)].float()
                out[source] = pool_prompt(hidden, mask) if kind == "hidden" else hidden[torch.arange(len(ids)), last]
        return out

    features = {source: {} for source in sources}
    start = time.perf_counter()
    with torch.no_grad():
        for task in stream:
            per_split = []
            for split in (task.train, task.validation, task.test):
                parts = [batch_features(batch) for batch in callback.encode_prompts(split)]
                per_split.append({source: torch.cat([p[source] for p in parts]).cpu() for source in sources})
            for source in sources:
                features[source][task.name] = tuple(split[source] for split in per_split)
    print(f"features ({', '.join(sources)}): {time.perf_counter() - start:.0f} s for {len(stream)} tasks", flush=True)
    return stream.names, features


def sweep(names, features, width, expansion_dim, args):
    selector = AnalyticSelector(hidden_size=width, feature_source="hidden", expansion_dim=expansion_dim,
                                expansion_seed=args.seed, balance_tasks=not args.no_balance)
    rows, solve_seconds, ridges = [], [], []
    for index, name in enumerate(names):
        selector.add_task()
        train, validation, _ = features[name]
        start = time.perf_counter()
        selector.add_statistics(index, train, validation)
        ridges.append(selector.solve()["ridge_factor"])
        solve_seconds.append(time.perf_counter() - start)
        guesses = [selector.scores(features[seen][2]).argmax(dim=-1) for seen in names[: index + 1]]
        rows.append([(guess == i).double().mean().item() for i, guess in enumerate(guesses)])
    kept = sum(t.numel() * t.element_size() for t in selector.state_dict().values())
    total = sum(len(features[name][2]) for name in names)
    correct = sum(rows[-1][i] * len(features[name][2]) for i, name in enumerate(names))
    return correct / total, forgetting_rate(rows), forgetting_drops(rows), kept, solve_seconds, ridges


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DATA))
    parser.add_argument("--tasks", default=ORDER_A)
    parser.add_argument("--sources", default="embeddings,hidden:-1,hidden:15,last:-1",
                        help="embeddings, hidden:<layer> (mean-pooled), last:<layer> (the prompt's last token)")
    parser.add_argument("--train-examples", type=int, default=None, help="training prompts per task (default all)")
    parser.add_argument("--expansion-dims", default="0,2048")
    parser.add_argument("--no-balance", action="store_true")
    parser.add_argument("--test-examples", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    base_path = resolve_base_model(None)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    sources = args.sources.split(",")
    names, all_features = stream_features(sources, args, tokenizer, base_path)
    for source in sources:
        features = all_features[source]
        width = features[names[0]][0].shape[1]
        for expansion_dim in (int(x) for x in args.expansion_dims.split(",")):
            accuracy, fra, drops, kept, seconds, ridges = sweep(names, features, width, expansion_dim, args)
            print(f"RESULT source={source} expansion={expansion_dim}: final routing accuracy {accuracy * 100:.1f}%, "
                  f"routing F.Ra {fra * 100:.2f} points (goal <= 0.5), kept {kept / 2**20:.1f} MiB, "
                  f"solve {sum(seconds) / len(seconds):.2f} s/task (last {seconds[-1]:.2f}); ridge factors {ridges}")
            print("    drops: " + ", ".join(f"{n} {d * 100:+.0f}" for n, d in zip(names, drops)))
    print(f"budget: {args.tasks}; {args.train_examples or 'all'} training prompts per task; first {args.test_examples} test prompts/task; "
          f"max_length {args.max_length}")


if __name__ == "__main__":
    main()
