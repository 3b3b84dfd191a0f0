"""The model card of a saved system: YAML metadata for the Hub, the task table, results, usage.

Rendered with `huggingface_hub`'s `ModelCard` from the template in `model_cards/` (packaged as
`hf_conpet/templates`), next to the accuracy-matrix plot, so the card says what was trained and
measured: the selector, the tasks in order, each task's score.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ._io import atomic_write
from .methods import MULTITASK_MODULE_NAME, SHARED_MODULE_NAME
from .names import MANIFEST_NAME, MATRIX_IMAGE_NAME
from .scoring import METRIC_DISPLAY_NAMES, score_name

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

CARD_NAME = "README.md"
TEMPLATE_NAME = "conpet_card.md"
LIBRARY_NAME = "hf-conpet"
CARD_TAGS = ("hf-conpet", "peft", "lora", "continual-learning")
# task_type (manifest) -> (pipeline_tag, hf_conpet class, transformers Auto class)
_TASK_TYPES = {
    "causallm": ("text-generation", "ConPetModelForCausalLM", "AutoModelForCausalLM"),
    "seq2seqlm": ("text2text-generation", "ConPetModelForSeq2SeqLM", "AutoModelForSeq2SeqLM"),
    "sequenceclassification": (
        "text-classification",
        "ConPetModelForSequenceClassification",
        "AutoModelForSequenceClassification",
    ),
    "seqcls": (
        "text-classification",
        "ConPetModelForSequenceClassification",
        "AutoModelForSequenceClassification",
    ),
}
# summary key (normalised) -> (display name, model-index metric id, meaning)
_SUMMARY_METRICS = (
    ("ap", "AP", "average_performance", "mean score (each task by its metric) over all tasks after the last one"),
    ("fra", "F.Ra", "forgetting_rate", "mean drop from each old task's best score to its final score (lower is better)"),
    ("bwt", "BWT", "backward_transfer", "mean change on old tasks since they were trained (negative = forgetting)"),
    ("fwt", "FWT", "forward_transfer", "mean gain on each task at training time over training it alone"),
    ("selectoraccuracy", "Selector accuracy", "selector_accuracy", "share of test inputs routed to their own task"),
)


def _metric_ids(metrics: Mapping[str, Any]) -> list[str]:
    """The metric ids of the card's YAML: each task's, once."""
    per_task = metrics.get("task_metrics")
    if isinstance(per_task, list) and per_task and all(isinstance(m, str) for m in per_task):
        return list(dict.fromkeys(per_task))
    return [str(metrics.get("metric") or "accuracy")]


def _score_name(metrics: Mapping[str, Any] | None) -> str:
    """What the matrix cells measure: "accuracy" (exact match), "ROUGE-L", or "score" for a mixed stream."""
    if not isinstance(metrics, Mapping):
        return "accuracy"
    return score_name(_metric_ids(metrics) if metrics.get("task_metrics") or metrics.get("metric") else ["exact_match"])


def _norm(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(key).lower())


def _task_type_info(task_type: str | None) -> tuple[str, str, str]:
    return _TASK_TYPES.get(_norm(task_type or "causal_lm"), _TASK_TYPES["causallm"])


def _md(text: Any, limit: int | None = None) -> str:
    """Text safe inside a markdown table cell: one line, no pipes, no raw HTML."""
    text = " ".join(str(text).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _hub_model_id(name: Any) -> str | None:
    """The base model as a Hub id, or None when it is a local path (the Hub cannot link that)."""
    if not isinstance(name, str) or not _HUB_ID.match(name) or ".." in name:
        return None
    if os.path.isabs(name) or os.path.exists(name):
        return None
    return name


def _summary(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    summary = metrics.get("summary")
    if not isinstance(summary, Mapping):
        summary = {k: v for k, v in metrics.items() if _norm(k) in {key for key, *_ in _SUMMARY_METRICS}}
        if not summary and _matrix(metrics):
            try:  # an un-summarised ContinualMetrics dict: summarise it the library's way
                from .metrics import ContinualMetrics

                summary = ContinualMetrics.from_dict(metrics).summary()
            except (ImportError, ValueError, TypeError):
                summary = {}
    return {_norm(k): v for k, v in summary.items()}


def _matrix(metrics: Mapping[str, Any]) -> list | None:
    matrix = metrics.get("accuracy_matrix", metrics.get("matrix"))
    return matrix if isinstance(matrix, (list, tuple)) and len(matrix) > 0 else None


def _task_field(task: Mapping[str, Any], key: str) -> Any:
    if task.get(key) is not None:
        return task[key]
    metadata = task.get("metadata")
    return metadata.get(key) if isinstance(metadata, Mapping) else None


_FORMER_METHODS = {"ewc": "EWC (a Fisher-weighted pull towards the weights old tasks left)",
                   "lwf": "LwF (distillation towards the model as each earlier task left it)"}


def system_description(config: Mapping[str, Any], task_names: list[str] | None = None) -> tuple[str, str, str]:
    """(one-line summary, short routing label, method paragraph) of the system a config and its task
    names describe: what the card and the Space say was trained."""
    selector = str(config.get("selector") or "none").lower()
    top_k = config.get("top_k", 1)
    if selector == "none" and task_names in ([SHARED_MODULE_NAME], [MULTITASK_MODULE_NAME]):
        return _shared_module_text(config, multitask=task_names == [MULTITASK_MODULE_NAME])
    if selector == "conpet":
        return (
            f"a task selector that routes every input to its top-{top_k} task module{'s' if top_k != 1 else ''}: "
            "no task id is needed at inference.",
            f"ConPET selector, top-{top_k}",
            f"**Dynamic ConPET** (Song et al., 2023). Each task gets its own LoRA module, frozen once the "
            f"task is learned. A selector (a task classifier that grows one output per task) picks the "
            f"top-{top_k} task module{'s' if top_k != 1 else ''} for each input and only those answer; it is "
            "trained on replay batches that mix new and stored old examples, so it keeps recognising old tasks.",
        )
    if selector == "analytic":
        return (
            f"a closed-form task router that sends every input to its top-{top_k} task module{'s' if top_k != 1 else ''}: "
            "no task id is needed at inference.",
            f"analytic (ridge) router, top-{top_k}",
            "**Dynamic ConPET with an analytic router.** Each task gets its own LoRA module, frozen once the "
            "task is learned. The router is a ridge regression from the frozen backbone's prompt features to the "
            "task id, solved in closed form from per-task statistics: it equals a router trained on every task's "
            "prompts at once, keeps no stored examples, and does not drift as tasks arrive.",
        )
    if selector == "sapt":
        return (
            "a shared attention that weighs the task modules for every input: no task id is needed at inference.",
            "SAPT shared attention (soft weights)",
            "**SAPT** (Zhao et al., 2024). Each task gets its own LoRA block, frozen once the task is learned. "
            "A query computed from the input's pooled token embeddings attends over one key per task; the "
            "attention weights mix all task blocks, the same way in training and at inference. An attentive "
            "reflection loss on inputs of old tasks keeps the attention from drifting.",
        )
    return (
        "oracle routing: each input must come with its task id.",
        "oracle (task id given)",
        "One LoRA module per task, frozen once the task is learned. This system has **no selector**: "
        "every input must name its task (oracle routing), the upper bound that the routed variants "
        "(ConPET, SAPT) are measured against.",
    )


def _shared_module_text(config: Mapping[str, Any], multitask: bool) -> tuple[str, str, str]:
    """A system of one LoRA module that every task trained (the classic baselines, Static ConPET)."""
    summary = "one LoRA module shared by every task: no routing, no task id."
    if multitask:
        return (summary, "one shared module (multitask)",
                "**Multitask**: one LoRA module trained on every task at once, the upper bound that the continual "
                "variants are measured against.")
    regularizer = str(config.get("regularizer") or "none")
    replay = config.get("train_data") == "replay"
    if replay:
        former = _FORMER_METHODS.get(regularizer, "EMR (episodic memory replay)")
        return (summary, "one shared module (Static ConPET)",
                f"**Static ConPET** (Song et al., 2023) with {former}: one LoRA module trained through the stream, "
                "each task on a fixed number of dynamic-replay batches that mix new and stored old examples, so "
                "the cost per task does not grow with the number of tasks.")
    if regularizer in _FORMER_METHODS:
        return (summary, f"one shared module ({regularizer})",
                f"**{_FORMER_METHODS[regularizer]}** on one LoRA module trained on each task in turn, no replay.")
    return (summary, "one shared module (sequential)",
            "**Sequential LoRA**: one LoRA module trained on each task in turn, no replay and no regulariser: the "
            "lower bound of forgetting.")


def _training_text(config: Mapping[str, Any]) -> str:
    parts = []
    if config.get("batches_per_task"):
        parts.append(f"{config['batches_per_task']} batches per task (dynamic replay: cost per task independent of the number of tasks)")
    if config.get("replay_ratio") is not None:
        parts.append(f"new:old replay ratio {config['replay_ratio']}")
    if config.get("regularizer") and config.get("regularizer") != "none":
        from .regularizers import DEFAULT_WEIGHTS

        weight = config.get("regularizer_weight")
        weight = weight if weight is not None else DEFAULT_WEIGHTS.get(config["regularizer"])
        parts.append(f"{config['regularizer']} regulariser (weight {weight})")
    if config.get("memory") in ("reservoir", "kmeans"):
        parts.append(f"replay memory: {config.get('memory_capacity')} {config['memory']} exemplars per task")
    if config.get("new_task_init") == "previous":
        parts.append("each new task module starts from the previous task's weights")
    lora = [f"r={config['r']}"] if config.get("r") is not None else []
    if config.get("lora_alpha") is not None:
        lora.append(f"alpha={config['lora_alpha']}")
    if config.get("target_modules"):
        lora.append("on " + ", ".join(f"`{m}`" for m in config["target_modules"]))
    text = ""
    if lora:
        text += "Task modules: LoRA " + " ".join(lora) + ". "
    if parts:
        text += "Training: " + "; ".join(parts) + "."
    return text.strip()


def _template_text(template_path: str | os.PathLike | None) -> str:
    if template_path is not None:
        return Path(template_path).read_text(encoding="utf-8")
    return resources.files("hf_conpet").joinpath("templates", TEMPLATE_NAME).read_text(encoding="utf-8")


def render_model_card(
    manifest: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    *,
    template_path: str | os.PathLike | None = None,
    matrix_image: str | None = MATRIX_IMAGE_NAME,
) -> ModelCard:
    """The model card of a saved system, rendered from `hf_conpet/templates/conpet_card.md`.

    `metrics` defaults to the manifest's own. YAML metadata: `library_name: hf-conpet` (the repo
    is loaded by hf_conpet; `peft` would make the Hub offer a PEFT snippet that fails, since the
    root holds no adapter), the base model as an `adapter` relation, tags, pipeline tag, and the
    summary metrics as `model-index` eval results. `matrix_image` is the PNG the card shows
    (relative to the repo root; None to leave it out).
    """
    metrics = metrics if metrics is not None else manifest.get("metrics")
    metrics = metrics if isinstance(metrics, Mapping) else None
    config = manifest.get("config") or {}
    tasks_in = [t if isinstance(t, Mapping) else {"name": str(t)} for t in manifest.get("tasks") or []]
    task_names = [str(t.get("name")) for t in tasks_in]
    base = manifest.get("base_model") or {}
    base_name = base.get("name_or_path") if isinstance(base, Mapping) else base
    base_name = str(base_name) if base_name else "<base model>"
    base_hub_id = _hub_model_id(base_name)
    base_license = base.get("license") if isinstance(base, Mapping) and isinstance(base.get("license"), str) else None
    pipeline_tag, model_class, auto_class = _task_type_info(manifest.get("task_type"))
    model_title = repo_id.split("/")[-1] if repo_id else f"hf_conpet system ({len(tasks_in)} tasks)"
    model_name = repo_id.split("/")[-1] if repo_id else "hf-conpet-system"

    # Hub dataset ids, where tasks name them (`dataset` / `hub_dataset`): others are not Hub repos.
    datasets = list(manifest.get("datasets") or [])
    for task in tasks_in:
        hub_dataset = _task_field(task, "hub_dataset") or _task_field(task, "dataset")
        if isinstance(hub_dataset, str) and _HUB_ID.match(hub_dataset) and hub_dataset not in datasets:
            datasets.append(hub_dataset)

    summary = _summary(metrics) if metrics else {}
    matrix = _matrix(metrics) if metrics else None
    finite = [v for row in (matrix or []) for v in (row or []) if isinstance(v, (int, float))]
    ap = summary.get("ap")
    percent = any(v > 1.0 for v in finite) or (isinstance(ap, (int, float)) and ap > 1.0)

    def fmt(value: Any, signed: bool = False) -> str:
        if not isinstance(value, (int, float)):
            return "n/a"
        text = f"{value:+.1f}" if (percent and signed) else f"{value:.1f}" if percent else (
            f"{value:+.3f}" if signed else f"{value:.3f}")
        return text

    benchmark = (metrics or {}).get("benchmark") or manifest.get("benchmark")
    stream_name = f"{len(task_names)}-task stream: " + " → ".join(task_names)
    eval_results = []
    summary_rows = []
    for key, display, metric_id, meaning in _SUMMARY_METRICS:
        value = summary.get(key)
        signed = key in ("bwt", "fwt")
        summary_rows.append({"name": display, "value": fmt(value, signed), "meaning": meaning})
        if isinstance(value, (int, float)):
            eval_results.append(
                EvalResult(
                    task_type=pipeline_tag,
                    dataset_type=str(benchmark or "hf-conpet-task-stream"),
                    dataset_name=str(benchmark or stream_name),
                    metric_type=metric_id,
                    metric_name=display,
                    metric_value=round(float(value), 4),
                    dataset_split="test",
                )
            )
    tags = list(CARD_TAGS)
    selector = str(config.get("selector") or "").lower()
    if selector in ("conpet", "analytic", "sapt"):
        tags.append(selector)
    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        base_model=base_hub_id,
        base_model_relation="adapter" if base_hub_id else None,
        license=manifest.get("license") or base_license,
        tags=tags,
        datasets=datasets or None,
        pipeline_tag=pipeline_tag,
        metrics=_metric_ids(metrics) if metrics else None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )

    final_row = (matrix or [[]])[-1] or []

    def task_metric(column: int | None) -> str:
        per_task = (metrics or {}).get("task_metrics")
        if isinstance(per_task, list) and column is not None and column < len(per_task) and isinstance(per_task[column], str):
            return per_task[column]
        return str((metrics or {}).get("metric") or "exact_match")

    scored = list((metrics or {}).get("examples_scored") or [])
    metric_names = list((metrics or {}).get("task_names") or task_names)
    tasks = []
    for position, task in enumerate(tasks_in, start=1):
        column = metric_names.index(task.get("name")) if task.get("name") in metric_names else None
        score = final_row[column] if column is not None and column < len(final_row) else None
        count = scored[column] if column is not None and column < len(scored) else None
        final = "—" if not isinstance(score, (int, float)) else fmt(score) + (f" ({count})" if isinstance(count, int) else "")
        labels = task.get("labels") or _task_field(task, "labels")
        if isinstance(labels, (list, tuple)) and labels:
            shown = ", ".join(f"`{_md(label, 40)}`" for label in labels[:12])
            labels_text = shown + (f", … ({len(labels)} labels)" if len(labels) > 12 else "")
        else:
            labels_text = "free text"
        instruction = task.get("instruction") or _task_field(task, "instruction")
        counts = {k: _task_field(task, k) for k in ("num_train", "num_test")}
        tasks.append({
            "position": position,
            "name": _md(task.get("name"), 64),
            "labels": labels_text,
            "metric": _md(METRIC_DISPLAY_NAMES.get(task_metric(column), task_metric(column)), 32),
            "instruction": _md(instruction, 200) if instruction else "—",
            "num_train": counts["num_train"] if counts["num_train"] is not None else "—",
            "num_test": counts["num_test"] if counts["num_test"] is not None else "—",
            "final": final,
        })

    matrix_rows = []
    header = task_names
    if matrix:
        names = list((metrics or {}).get("task_names") or task_names)
        header = [_md(n, 24) for n in names]
        for j, row in enumerate(matrix):
            cells = [fmt(v) if isinstance(v, (int, float)) else "" for v in (row or [])]
            cells += [""] * (len(names) - len(cells))
            matrix_rows.append({"label": f"{j + 1}. `{header[j] if j < len(header) else j + 1}`", "cells": cells})

    routing_summary, routing_short, method = system_description(config, task_names)
    training = _training_text(config)
    repo_ref = repo_id or "<repo_id or local folder>"
    example_task = task_names[0] if task_names else "<task>"
    first_instruction = next((t.get("instruction") for t in tasks_in if t.get("instruction")), None)
    # json.dumps gives a valid Python string literal whatever the instruction holds
    example_prompt = json.dumps(f"{first_instruction}\n...\nOutput: " if first_instruction else "...",
                                ensure_ascii=False)
    batch = 'batch = tokenizer(prompts, return_tensors="pt", padding=True)'
    if selector == "none" or not selector:
        usage = f"{batch}\nout = model.generate(**batch, task_ids=[0], max_new_tokens=8)  # no selector: name each input's task"
    elif pipeline_tag == "text-classification":
        usage = f"{batch}\nlogits = model(**batch).logits  # each example routed to its own task"
    else:
        usage = (
            "model.route(prompts, tokenizer=tokenizer)  # per-example task weights\n"
            f"{batch}\nout = model.generate(**batch, max_new_tokens=8)  # each example routed to its own task"
        )

    card = ModelCard.from_template(
        card_data,
        template_str=_template_text(template_path),
        model_title=model_title,
        base_model_name=base_name,
        base_model_link=f"[`{base_name}`](https://huggingface.co/{base_hub_id})" if base_hub_id else f"`{base_name}`",
        base_license=f"`{_md(base_license, 64)}`" if base_license else "not recorded: see the base model's own card",
        metric_name=_md(_score_name(metrics), 32),
        task_type=manifest.get("task_type") or "causal_lm",
        pipeline_tag=pipeline_tag,
        model_class=model_class,
        auto_class=auto_class,
        tasks=tasks,
        routing_summary=routing_summary,
        routing_short=routing_short,
        method_description=(method + ("\n\n" + training if training else "")),
        config_json=json.dumps(config, indent=2, sort_keys=True),
        library_version=manifest.get("library_version", "?"),
        format_version=manifest.get("format_version", "?"),
        has_metrics=bool(metrics) and (bool(summary) or bool(matrix)),
        matrix_image=matrix_image if matrix else None,
        summary_rows=summary_rows,
        matrix_header=header,
        matrix_rows=matrix_rows,
        repo_ref=repo_ref,
        example_task=example_task,
        usage_example=usage,
        example_prompt=example_prompt,
        has_selector=bool(manifest.get("selector")) or selector in ("conpet", "analytic", "sapt"),
    )
    return card


def write_model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    *,
    manifest: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Write `README.md` (and `accuracy_matrix.png` when there is a matrix) into a saved folder.

    Both files are written under temporary names and renamed, like the rest of the layout.
    """
    from .plots import plot_accuracy_matrix

    folder = Path(folder)
    if manifest is None:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    metrics = metrics if metrics is not None else manifest.get("metrics")
    matrix = _matrix(metrics) if isinstance(metrics, Mapping) else None
    if matrix:
        names = list(metrics.get("task_names") or [t.get("name") for t in manifest.get("tasks", [])])
        measured = _score_name(metrics)
        plot_accuracy_matrix(matrix, names, folder / MATRIX_IMAGE_NAME, score_name=measured,
                             title=f"{repo_id or 'hf_conpet'}: {measured} after each task")
    card = render_model_card(manifest, metrics, repo_id, matrix_image=MATRIX_IMAGE_NAME if matrix else None)
    atomic_write(folder / CARD_NAME, card.content)
    return card
