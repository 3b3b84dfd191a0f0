"""`hf-conpet eval` and `hf-conpet route`: re-evaluate a saved system, route prompts through it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import CHECKPOINT_DIR, DEFAULTS, PROG, SYSTEM_DIR, CliError, one_line
from .run_settings import check_data

def _system_dir(path: str) -> Path:
    import contextlib

    from .._io import recover_directory
    from ..saved_layout import MANIFEST_NAME

    folder = Path(path).expanduser()
    for candidate in (folder, folder / SYSTEM_DIR):  # a save killed mid-swap: finish or undo it first
        with contextlib.suppress(OSError):
            recover_directory(candidate)
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

    from .. import ConPetModelForCausalLM
    from ..saved_layout import read_manifest

    folder = _system_dir(path)
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as error:
        raise CliError(one_line(error)) from None
    if manifest.get("task_type") != ConPetModelForCausalLM.task_type:
        raise CliError(f"{folder} holds a {manifest.get('task_type')!r} system; this command serves causal LMs")
    from transformers.utils import logging as hf_logging

    # The base as `from_pretrained` finds it from the manifest (id and recorded revision: the
    # embedded GGUF conversion for a system trained on it, even where a Hub-cache copy exists).
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = ConPetModelForCausalLM.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001
        raise CliError(f"cannot load the system in {folder}: {type(error).__name__}: {one_line(error)}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise CliError(f"the base model of {folder} ({model.base_model.model.config._name_or_path}) has no tokenizer")
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


def _recorded_stream(run: dict[str, Any], names: list[str], tokenizer, max_test: int | None):
    """The test splits of the stream file a run was trained from, for the tasks in `names`."""
    from ..data import TaskStream
    from ..data.stream_file import StreamFileError, load_stream_file

    path = Path(run["stream"])
    if not path.is_file():
        raise CliError(f"this system was trained from the stream file {path}, which is not there: pass --data-dir")
    try:
        stream = load_stream_file(path, tokenizer=tokenizer, seed=run.get("seed") or 0, max_test=max_test)
    except StreamFileError as error:
        raise CliError(one_line(error)) from None
    missing = [name for name in names if name not in stream.names]
    if missing:
        raise CliError(f"{path} has no task {missing[0]!r} (its tasks: {', '.join(stream.names)})")
    return TaskStream([stream[name].with_index(position) for position, name in enumerate(names)], tokenizer=tokenizer)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..data import TaskStream
    from ..evaluation import evaluate_task

    model, tokenizer, manifest, folder = _load_system(args.system)
    run = ((manifest.get("metrics") or {}).get("run")) or {}
    recorded_tasks = ((manifest.get("metrics") or {}).get("task_names")) or model.task_names
    routing = _routing_for(model, args.routing)
    max_test = args.max_eval_examples or run.get("max_eval_examples")
    if args.data_dir is None and run.get("stream"):  # trained from a stream file: read the same datasets
        root, stream = Path(run["stream"]), _recorded_stream(run, args.tasks or recorded_tasks, tokenizer, max_test)
        tasks = stream.names
    elif args.data_dir is not None:
        root, embedded = Path(args.data_dir).expanduser(), False
    elif run.get("data_dir"):
        root, embedded = Path(run["data_dir"]), False
        if not root.is_dir():
            raise CliError(f"{folder} was trained on data in {root}, which is not there: pass --data-dir")
    else:
        from ..default_model import DEFAULT_DATA_DIR

        root, embedded = DEFAULT_DATA_DIR, True
    if not run.get("stream") or args.data_dir is not None:
        tasks = check_data(root, list(args.tasks or recorded_tasks), embedded)
    if routing in ("selector", "oracle", "sum"):
        foreign = [t for t in tasks if t not in model.task_names]
        if foreign:
            raise CliError(f"unknown task {foreign[0]!r}: this system's tasks are {', '.join(model.task_names)}")
    if not run.get("stream") or args.data_dir is not None:
        try:
            stream = TaskStream.from_dir(root, order=tasks, tokenizer=tokenizer, max_test=max_test,
                                         template=run.get("template") or DEFAULTS["template"])
        except (OSError, ValueError, KeyError) as error:
            raise CliError(f"cannot read the tasks in {root}: {one_line(error)}") from None
    collator = stream.collator("causal_lm", "generate", max_length=args.max_length or run.get("max_length") or DEFAULTS["max_length"])
    print(f"{folder}: {model.num_tasks} task module(s), routing: {routing}; data {root}")
    rows, hits, counted = [], 0, 0
    for task in stream:
        index = model.task_index(task.name) if routing != "shared" else task.index
        task = task.with_index(index)  # the model's own index for this task, whatever the order of --tasks
        score = evaluate_task(model, task, collator, tokenizer, routing=routing)
        routed = None if score.selector_correct is None else score.selector_correct / score.total
        if score.selector_correct is not None:
            hits, counted = hits + score.selector_correct, counted + score.total
        rows.append((task.name, score.metric, score.accuracy, routed, score.total))
    width = max(len("task"), *(len(name) for name, *_ in rows))
    print(f"{'task':<{width}}  {'metric':<11}  {'score':>6}  {'routed right':>12}  {'examples':>8}")
    for name, metric, accuracy, routed, total in rows:
        routed_text = "-" if routed is None else f"{100 * routed:.1f}"
        print(f"{name:<{width}}  {metric:<11}  {100 * accuracy:>6.1f}  {routed_text:>12}  {total:>8}")
    mean = sum(row[2] for row in rows) / len(rows)
    print(f"{'mean':<{width}}  {'':<11}  {100 * mean:>6.1f}")
    selector_text = f"{100 * hits / counted:.1f}%" if counted else "n/a (no selector routing)"
    print(f"selector accuracy: {selector_text}")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    import torch

    from ..data import CausalLMGenerationCollator

    texts = [text.replace("\\n", "\n") for text in args.texts]
    blank = [number for number, text in enumerate(texts, start=1) if not text.strip()]
    if blank:
        raise CliError(f"prompt {blank[0]} is empty: give the text to route")
    model, tokenizer, manifest, folder = _load_system(args.system)
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

    from ..evaluation import saved_answer_budget

    max_new = args.max_new_tokens or saved_answer_budget(model.tasks, tokenizer)
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
