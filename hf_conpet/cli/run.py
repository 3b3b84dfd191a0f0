"""`hf-conpet run`: train a stream, then publish the system, metrics, card, plot and log."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .._io import atomic_directory, atomic_write_json
from .common import CHECKPOINT_DIR, DEFAULT_OUTPUT, LOG_FILE, METRICS_FILE, PROG, RUN_ARGS_FILE, SYSTEM_DIR, CliError, load_base, one_line
from .run_settings import check_data, check_output, check_resumable, check_unchanged, data_dir, resolve_settings

logger = logging.getLogger("hf_conpet.cli")

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
    from ..trainer import ContinualTrainer

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


def _publish(output: Path, model, metrics: dict[str, Any], examples: dict[str, list[str]] | None) -> Path:
    """The final outputs: the system (with its card, plot and demo examples) built aside and renamed into place."""
    from ..model_card import write_model_card

    system = output / SYSTEM_DIR
    with atomic_directory(system) as staging:
        model.write_layout(staging, metrics=metrics, examples=examples)
        write_model_card(staging)
    atomic_write_json(output / METRICS_FILE, metrics)
    return system


def cmd_run(args: argparse.Namespace) -> int:
    import torch
    from transformers import TrainingArguments, set_seed

    from .. import ConPetModelForCausalLM
    from ..data import TaskStream, check_answers_fit
    from ..methods import METHODS, method_config

    output = Path(args.output or DEFAULT_OUTPUT).expanduser()
    recorded = check_output(output, args.resume)
    if recorded is not None:
        check_unchanged(args, recorded, output)
    settings = resolve_settings(args, recorded)
    from ..saved_layout import MAX_EXAMPLES_PER_TASK, usable_examples

    if settings["examples_per_task"] > MAX_EXAMPLES_PER_TASK:
        raise CliError(f"--examples-per-task is at most {MAX_EXAMPLES_PER_TASK}, got {settings['examples_per_task']}")
    method = settings["method"]
    if method not in METHODS:
        raise CliError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if settings["stream"] is not None:
        if settings["data_dir"] is not None or getattr(args, "tasks", None) is not None:
            raise CliError("--stream names the tasks and their data: drop --data-dir and --tasks")
        from ..data.stream_file import StreamFileError, load_stream_file

        root = Path(settings["stream"])
        from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        bars_were_off = are_progress_bars_disabled()
        disable_progress_bars()  # "Generating train split" bars would break the one-line errors
        try:
            stream = load_stream_file(root, seed=settings["seed"], max_train=settings["max_train_examples"])
        except StreamFileError as error:
            raise CliError(one_line(error)) from None
        finally:
            if not bars_were_off:
                enable_progress_bars()
        tasks = settings["tasks"] = list(stream.names)
    else:
        root = data_dir(settings)
        tasks = check_data(root, settings["tasks"], embedded=settings["data_dir"] is None)
        settings["tasks"] = tasks
        try:
            stream = TaskStream.from_dir(root, order=tasks, seed=settings["seed"], max_train=settings["max_train_examples"],
                                         template=settings["template"])
        except (OSError, ValueError, KeyError) as error:
            raise CliError(f"cannot read the tasks in {root}: {one_line(error)}") from None
    if settings["memory_budget"] < len(tasks):
        raise CliError(f"--memory-budget {settings['memory_budget']} cannot keep one replay row per task for {len(tasks)} tasks")
    finished = check_resumable(output, method, tasks) if args.resume else []

    try:
        config = method_config(
            method, r=settings["r"], lora_alpha=float(settings["lora_alpha"]), target_modules=list(settings["targets"]),
            new_task_init=settings["new_task_init"], batches_per_task=settings["max_steps_per_task"],
            memory=settings["memory"], memory_capacity=settings["memory_capacity"],
            regularizer_weight=settings["regularizer_weight"],
        )
    except ValueError as error:
        raise CliError(one_line(error)) from None
    print(f"loading base model {settings['model'] or '(embedded default: SmolLM2-135M-Instruct)'} ...", flush=True)
    set_seed(settings["seed"])
    base, tokenizer = load_base(settings["model"])
    stream.tokenizer = tokenizer
    try:
        model = ConPetModelForCausalLM(base, config, tokenizer=tokenizer)
    except ValueError as error:
        raise CliError(f"cannot put LoRA modules on {settings['model'] or 'the default model'}: {one_line(error)}") from None

    try:  # a training answer longer than --max-length is refused before anything is written
        check_answers_fit(stream.collator("causal_lm", "train", max_length=settings["max_length"], tokenizer=tokenizer),
                          [task for task in stream if task.name not in finished])
    except ValueError as error:
        raise CliError(f"--max-length {settings['max_length']} is too short: {one_line(error)}") from None

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
                memory_budget=settings["memory_budget"],
                progress=progress, echo=echo,
            )
            metrics = trainer.fit()
            result = {**metrics.to_dict(), "run": {**settings, "seconds": round(time.perf_counter() - started, 1)}}
            count = settings["examples_per_task"]
            picked = {task.name: usable_examples(task.test["input"], count) for task in stream} if count else {}
            examples = {name: texts for name, texts in picked.items() if texts} or None
            system = _publish(output, model, result, examples)
        except KeyboardInterrupt:
            logger.warning("interrupted", exc_info=True)
            print(f"{PROG}: interrupted; finished tasks are kept in {output / CHECKPOINT_DIR}: "
                  f"continue with `{PROG} run --output {output} --resume`", file=sys.stderr)
            return 130
        except Exception as error:  # noqa: BLE001 - one line on the console, the traceback in the log
            logger.exception("run failed")
            print(f"{PROG}: error: {type(error).__name__}: {one_line(error)} (traceback in {log_path}; "
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
