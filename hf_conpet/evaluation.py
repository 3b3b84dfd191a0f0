"""Scoring one task: greedy generation scored by the task's metric (exact match, ROUGE-L) or argmax
over heads, and routing accuracy.

How an example reaches a task module is the `routing` argument, so one function serves every
method of the harness: `"selector"` (no task id: what users get), `"oracle"` (the true task id),
`"shared"` (one module for everything: seq_lora, replay, multitask) and `"sum"` (every module at
weight 1: O-LoRA).

`AnswerCache`: an example sent (top-1) to a *frozen* module always gets the same greedy answer,
so a continual run that evaluates every seen task after every task only has to generate for new
and re-routed examples. That is most of ConPET's and the oracle's evaluation time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data import NON_MODEL_KEYS
from .layers import RoutingPlan
from .scoring import example_score

#: A free-text task gets this many new tokens at most, whatever its longest training answer.
MAX_ANSWER_TOKENS = 64

ROUTINGS = ("selector", "oracle", "shared", "sum")


class AnswerCache(dict):
    """(task name, split, example index, module index) -> generated answer, for hard top-1 routes.

    Only valid while the modules it names stay frozen: `evaluate_task` reads and fills it only
    when the model has no trainable task parameters, and only for top-1 plans (a soft mixture
    changes whenever a new module joins it). Answers are reused from the batch they were first
    generated in; padding differences between batches could only move them by float rounding.
    """


@dataclass
class TaskScore:
    """One task's score (``accuracy``: the mean of its metric, in [0, 1]) and what produced it."""

    task: str
    accuracy: float
    total: int
    selector_correct: int | None = None
    predictions: list[str] = field(default_factory=list)
    metric: str = "exact_match"


def generation_budget(task, tokenizer, *, percentile: float = 95.0, cap: int = MAX_ANSWER_TOKENS) -> int:
    """New tokens to generate for `task`: its longest label + 2, or for free text the `percentile`
    of its training answers' lengths + 1 (the end-of-answer token), at most `cap`.

    A per-task budget: a sentiment label needs 3 tokens, a summary 40; one global budget either
    cuts summaries or makes every label task generate (and pay for) 40 tokens.
    """
    if task.labels:
        return max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in task.labels) + 2
    answers = list(task.train["output"]) or list(task.test["output"])
    lengths = [len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]]
    return int(min(cap, max(1, np.ceil(np.percentile(lengths, percentile))) + 1))


def _routing_arguments(model, routing: str, batch: dict) -> tuple[dict, torch.Tensor | None]:
    """Keyword arguments that route `batch`, and the task each example was sent to (selector only)."""
    size = batch["input_ids"].shape[0]
    if routing == "oracle":
        return {"task_ids": batch["task_ids"]}, None
    if routing == "shared":
        return {"task_ids": torch.zeros(size, dtype=torch.long)}, None
    if routing == "sum":
        return {"routing_weights": torch.ones(size, model.num_tasks)}, None
    if routing == "selector":
        plan = model.routing_plan(batch["input_ids"], batch["attention_mask"])
        if plan.indices is None:
            chosen = plan.weights.argmax(dim=-1)
        else:
            chosen = plan.indices.gather(1, plan.weights.argmax(dim=-1, keepdim=True)).squeeze(1)
        return {"routing_plan": plan}, chosen.cpu()
    raise ValueError(f"Unknown routing {routing!r}; expected one of {ROUTINGS}")


def _single_module(route_kwargs: dict) -> torch.Tensor | None:
    """The one module each example goes to, when routing is hard top-1; else None."""
    if "task_ids" in route_kwargs:
        return route_kwargs["task_ids"].view(-1).cpu()
    plan = route_kwargs.get("routing_plan")
    if plan is not None and plan.indices is not None and plan.indices.shape[1] == 1:
        return plan.indices[:, 0].cpu()
    return None


def _select_rows(route_kwargs: dict, rows: torch.Tensor) -> dict:
    """`route_kwargs` for a subset of the batch's rows."""
    return {key: value.select(rows) if isinstance(value, RoutingPlan) else value[rows.to(value.device)]
            for key, value in route_kwargs.items()}


def saved_answer_budget(tasks, tokenizer) -> int:
    """New tokens for an input of any task of a loaded system (the route-and-answer front ends).

    The largest budget training recorded per task (``metadata["max_new_tokens"]``, from
    :func:`generation_budget`), else the longest label + 2 (at most 32); 16 for free-text tasks
    saved before budgets were recorded.
    """
    recorded = [task.metadata["max_new_tokens"] for task in tasks if isinstance(task.metadata.get("max_new_tokens"), int)]
    if recorded:
        return max(recorded)
    labels = [label for task in tasks for label in (task.labels or [])]
    if not labels:
        return 16
    return min(max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels) + 2, 32)


@torch.no_grad()
def evaluate_task(
    model,
    task,
    collator,
    tokenizer,
    *,
    routing: str = "selector",
    batch_size: int = 16,
    max_examples: int | None = None,
    max_new_tokens: int | None = None,
    split: str = "test",
    answer_cache: AnswerCache | None = None,
) -> TaskScore:
    """Score `task` on `split` (first `max_examples` rows) by `task.metric`. `collator` must be a
    generation collator (prompt only, left padded for decoder-only models) or a classification
    collator with global labels. `answer_cache` (generation only) reuses answers of examples routed
    top-1 to a frozen module. `max_new_tokens` defaults to :func:`generation_budget`.

    Examples are batched longest prompt first, so a batch's rows have similar lengths and padding
    does not dominate long-input tasks; predictions come back in the split's order."""
    dataset = task.split(split)
    if max_examples is not None:
        dataset = dataset.select(range(min(max_examples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"Task {task.name!r} has no {split} examples to evaluate")
    was_training = model.training
    model.eval()
    device = model._device
    order = np.argsort([-len(prompt) for prompt in dataset["prompt"]], kind="stable")
    loader = DataLoader(dataset.select(order), batch_size=batch_size, shuffle=False, collate_fn=collator)
    if max_new_tokens is None and model.task_type != "sequence_classification":
        max_new_tokens = generation_budget(task, tokenizer)
    if answer_cache is not None and model.trainable_parameters():
        answer_cache = None  # a live module can still change: nothing it answers may be reused
    correct, routed_right, predictions, first_row = 0.0, 0, [], 0
    for batch in loader:
        references = batch.get("references")
        for key in NON_MODEL_KEYS:
            batch.pop(key, None)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        route_kwargs, chosen = _routing_arguments(model, routing, batch)
        if chosen is not None:
            routed_right += int((chosen == batch["task_ids"].cpu()).sum())
        batch.pop("task_ids")  # routing was decided above; the base model takes no task ids
        if model.task_type == "sequence_classification":
            labels = batch.pop("labels")
            batch.pop("label_ids", None)
            logits = model(**batch, **route_kwargs).logits
            guesses = logits.argmax(dim=-1)
            correct += int((guesses == labels).sum())
            predictions += [str(int(g)) for g in guesses]
            continue
        batch.pop("labels", None)
        size = batch["input_ids"].shape[0]
        modules = _single_module(route_kwargs) if answer_cache is not None else None
        rows_here = order[first_row:first_row + size]
        keys = [(task.name, split, int(rows_here[i]), int(modules[i])) for i in range(size)] if modules is not None else [None] * size
        first_row += size
        texts = [answer_cache.get(key) if key is not None else None for key in keys]
        missing = [i for i, text in enumerate(texts) if text is None]
        if missing:
            rows = torch.tensor(missing)
            subset = {k: v[rows.to(v.device)] if torch.is_tensor(v) else v for k, v in batch.items()}
            fresh = _generate_answers(model, tokenizer, subset, _select_rows(route_kwargs, rows), max_new_tokens)
            for i, text in zip(missing, fresh):
                texts[i] = text
                if keys[i] is not None:
                    answer_cache[keys[i]] = text
        predictions += texts
        correct += sum(example_score(task.metric, p, r) for p, r in zip(texts, references))
    model.train(was_training)
    total = len(dataset)
    in_split_order = [None] * total
    for position, row in enumerate(order):
        in_split_order[row] = predictions[position]
    return TaskScore(
        task=task.name, accuracy=correct / total, total=total,
        selector_correct=routed_right if routing == "selector" else None, predictions=in_split_order,
        metric=task.metric,
    )


def _generate_answers(model, tokenizer, batch: dict, route_kwargs: dict, max_new_tokens: int | None) -> list[str]:
    """Greedy answers (first line, stripped) of a prompt-only batch."""
    output = model.generate(
        **batch, **route_kwargs, max_new_tokens=max_new_tokens or 8, do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    if model.task_type == "causal_lm":
        output = output[:, batch["input_ids"].shape[1]:]
    return [text.strip().split("\n")[0] for text in tokenizer.batch_decode(output, skip_special_tokens=True)]
