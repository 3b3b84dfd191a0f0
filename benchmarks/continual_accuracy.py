"""Every method of the harness on one stream and one budget: AP, F.Ra, BWT, FWT, selector accuracy.

    python benchmarks/continual_accuracy.py --data-dir ../shared/data/long_sequence \\
        --tasks yelp,amazon,mnli,cb,copa,rte,sst2,boolq,wic,agnews \\
        --methods oracle,conpet,sapt,sapt_no_arm,replay,seq_lora,multitask

Any directory in the long_sequence layout works (<task>/{train,test}.jsonl + meta.json). The
oracle run goes first when listed: one *fresh* LoRA per task (whatever --new-task-init says),
routed by the true task id, so its diagonal is the single-task score FWT is measured against.
Every figure printed comes from one budget, printed beside it (and from one run, unless
`--resume` added methods); `AP / multitask` needs `multitask` among the methods. results.json is
rewritten after every method, so an interrupted run keeps what it finished; `--resume` runs only
the methods it does not hold yet, and refuses if it was written under another budget. The final
table measures every method's FWT against the oracle's diagonal, whichever ran first.

Default budget (30 steps x batch 8 per task, lr 5e-4, max_length 128, first 100 test examples per
task: 956 prompts on the 10 tasks of ../shared/data, ConPET selector on input embeddings with 600
steps per task), 2 CPU cores: multitask 38.7 min, conpet 28.8 min. At 25 steps and 30 test examples
per task (an earlier run): multitask 24.4, conpet 19.4 (33.1 on the last hidden state), sapt 25.9,
seq_lora 24.8, oracle 26.2.
SuperNI (--data-dir ../shared/data/superni, order 1 of its README, free text scored by ROUGE-L;
--template auto picks SuperNI's prompt): --steps-per-task 20 --max-length 384 --max-eval-examples 40
--selector-steps 300 (440 prompts, each task generating at most its own budget: 2 tokens for csqa,
64 for diplomacy): conpet 25.0 min, multitask 34.8. seq_lora re-scores every earlier task with its
live module after every task (no answer can be reused), so at 40 examples it would take about 100
minutes: measured at --max-eval-examples 10 (30.7 min).
Answers of examples routed top-1 to frozen modules are reused across rows (evaluation.AnswerCache);
SAPT's soft mixture cannot be cached, so its evaluation grows with rows x examples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from hf_conpet._io import atomic_write_json
from hf_conpet import ConPetModelForCausalLM
from hf_conpet.data import TaskStream
from hf_conpet.methods import method_config
from hf_conpet.metrics import ContinualMetrics
from hf_conpet.default_model import DEFAULT_DATA_DIR, DEFAULT_TASKS, resolve_base_model
from hf_conpet.trainer import ContinualTrainer


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--methods", default="oracle,conpet,sapt,replay,seq_lora,multitask")
    parser.add_argument("--model", default=None, help="Hub id or path; default: the offline SmolLM2-135M-Instruct")
    parser.add_argument("--steps-per-task", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--template", default="auto",
                        help="prompt template: a preset (default, superni) or a format string; auto: SuperNI's "
                             "prompt when every task is free text (meta.json labels null), else the default")
    parser.add_argument("--max-train", type=int, default=None, help="training examples per task (default: all)")
    parser.add_argument("--max-eval-examples", type=int, default=100, help="first N test examples per task")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16)
    parser.add_argument("--targets", default="q_proj,v_proj")
    parser.add_argument("--new-task-init", default="previous", choices=["random", "previous"],
                        help="how a new task module starts (the oracle always starts fresh)")
    parser.add_argument("--selector-feature", default="embeddings", choices=["hidden", "embeddings"],
                        help="what ConPET's classifier reads: pooled input embeddings (no extra forward; as "
                             "accurate on these tasks, see selector_accuracy.py) or the last hidden state (the paper)")
    parser.add_argument("--selector-steps", type=int, default=600,
                        help="ConPET selector batches per task (32 cached prompts, half new; seconds per task)")
    parser.add_argument("--selector-learning-rate", type=float, default=None, help="SAPT's query/key rate")
    parser.add_argument("--arm-lambda", type=float, default=None, help="SAPT's reflection weight")
    parser.add_argument("--regularizer-weight", type=float, default=None,
                        help="weight of ewc / lwf / olora (default: each regulariser's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/continual_accuracy")
    parser.add_argument("--resume", action="store_true",
                        help="keep the methods already in OUTPUT/results.json (same budget only) and run the rest")
    return parser.parse_args()


def run_method(method, args, tokenizer, base_path, single_task_scores):
    torch.manual_seed(args.seed)
    stream = TaskStream.from_dir(args.data_dir, order=args.tasks.split(","), tokenizer=tokenizer,
                                 max_train=args.max_train, seed=args.seed, template=args.template)
    selector_options = {}
    if method == "conpet":  # conpet_analytic keeps its method's features: the last prompt token's hidden state
        selector_options = {"feature_source": args.selector_feature}
    elif method in ("sapt", "sapt_no_arm"):
        selector_options = {"selection_lambda": 1.0}  # the figures in the README were measured with it
        if method == "sapt" and args.arm_lambda is not None:
            selector_options["arm_lambda"] = args.arm_lambda
    config = method_config(
        method, r=args.r, lora_alpha=args.lora_alpha, target_modules=args.targets.split(","),
        new_task_init="random" if method == "oracle" else args.new_task_init,
        selector_options=selector_options, selector_learning_rate=args.selector_learning_rate,
        regularizer_weight=args.regularizer_weight,
    )
    base = AutoModelForCausalLM.from_pretrained(base_path)
    model = ConPetModelForCausalLM(base, config, tokenizer=tokenizer)
    training_args = TrainingArguments(
        output_dir=str(Path(args.output) / method), per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, weight_decay=0.0, lr_scheduler_type="constant", logging_strategy="no",
        report_to=[], disable_tqdm=True, seed=args.seed, use_cpu=not torch.cuda.is_available(),
    )
    trainer = ContinualTrainer(
        model, stream, training_args, method=method, batches_per_task=args.steps_per_task, resume=False,
        max_length=args.max_length, max_eval_examples=args.max_eval_examples, single_task_scores=single_task_scores,
        selector_steps=args.selector_steps,
    )
    start = time.perf_counter()
    metrics = trainer.fit()
    return metrics, time.perf_counter() - start


def load_finished(path: Path, budget: str) -> dict:
    """The methods a previous run of the same budget finished (for --resume)."""
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    if saved.get("budget") != budget:
        raise SystemExit(f"--resume: {path} was measured under another budget:\n  saved: {saved.get('budget')}\n"
                         f"  now:   {budget}\nUse another --output, or the same flags.")
    return saved["results"]


def oracle_scores(results: dict) -> dict | None:
    """The oracle's diagonal (fresh single-task LoRAs), which FWT is measured against."""
    if "oracle" not in results:
        return None
    metrics = results["oracle"]["metrics"]
    return {name: metrics["matrix"][i][i] for i, name in enumerate(metrics["task_names"])}


def main():
    args = parse_args()
    if args.template == "auto":
        free_text = all(json.loads((Path(args.data_dir) / name / "meta.json").read_text()).get("labels") is None
                        for name in args.tasks.split(","))
        args.template = "superni" if free_text else "default"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    base_path = resolve_base_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    methods = args.methods.split(",")
    if "oracle" in methods:
        methods.remove("oracle")
        methods.insert(0, "oracle")
    budget = (f"{len(args.tasks.split(','))} tasks ({args.tasks}), {args.steps_per_task} steps/task x batch "
              f"{args.batch_size}, lr {args.learning_rate}, LoRA r={args.r} alpha={args.lora_alpha} on {args.targets}, "
              f"new task modules start {args.new_task_init} (oracle: fresh), max_length {args.max_length}, "
              f"first {args.max_eval_examples} test examples/task, template {args.template}, ConPET selector features {args.selector_feature}, "
              f"{args.selector_steps} selector steps/task, "
              f"SAPT selector lr {args.selector_learning_rate or 'same'}, torch threads {torch.get_num_threads()}"
              + (f", regulariser weight {args.regularizer_weight}" if args.regularizer_weight is not None else ""))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results = load_finished(output / "results.json", budget) if args.resume else {}
    if results:
        print(f"resuming: {', '.join(results)} already measured under this budget in {output / 'results.json'}")
    single_task_scores = oracle_scores(results)
    for method in methods:
        if method in results:
            continue
        metrics, seconds = run_method(method, args, tokenizer, base_path, single_task_scores)
        results[method] = {"summary": metrics.summary(), "seconds": seconds, "metrics": metrics.to_dict()}
        single_task_scores = oracle_scores(results)
        print(f"\n=== {method} ({seconds / 60:.1f} min) ===\n{metrics.table()}", flush=True)
        atomic_write_json(output / "results.json", {"budget": budget, "results": results})

    print(f"\nbudget: {budget}")
    multitask_ap = results.get("multitask", {}).get("summary", {}).get("AP")
    header = f"{'method':<12} {'AP':>6} {'F.Ra':>6} {'BWT':>7} {'FWT':>7} {'select':>7} {'AP/mt':>6} {'min':>5}"
    print(header)

    def fmt(value, width, signed=False):
        if value is None:
            return f"{'-':>{width}}"
        return f"{value * 100:>+{width}.1f}" if signed else f"{value * 100:>{width}.1f}"

    for method, result in results.items():
        s = result["summary"]
        if single_task_scores is not None:  # FWT of methods that ran before the oracle, too
            metrics = ContinualMetrics.from_dict(result["metrics"])
            s = result["summary"] = dataclasses.replace(
                metrics, single_task_scores=[single_task_scores[n] for n in metrics.task_names]).summary()
        ratio = f"{s['AP'] / multitask_ap:>6.3f}" if multitask_ap else f"{'-':>6}"
        print(f"{method:<12} {fmt(s['AP'], 6)} {fmt(s['F.Ra'], 6)} {fmt(s['BWT'], 7, True)} {fmt(s['FWT'], 7, True)} "
              f"{fmt(s['selector_accuracy'], 7)} {ratio} {result['seconds'] / 60:>5.1f}")
    atomic_write_json(output / "results.json", {"budget": budget, "results": results})


if __name__ == "__main__":
    main()
