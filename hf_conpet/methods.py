"""The methods of the harness: what each trains on a new task, and how it answers.

ConPET's dynamic method and SAPT grow one module per task and route without a task id; the
classic baselines train one shared module through the stream (Static ConPET with dynamic replay,
sequential LoRA, multitask) or sum per-task modules (O-LoRA). `oracle` is ConPET's modules routed
by the true task id: the ceiling a selector can reach.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    module_per_task: bool
    """True: add_task opens a fresh module per task and freezes the old; False: one shared module."""
    eval_routing: str
    """How evaluation routes: selector, oracle, shared or sum (see evaluation.py)."""
    selector: str | None = None
    """Selector kind the model needs ('conpet', 'sapt'), or None."""
    selector_options: tuple = ()
    train_data: str = "task"
    """'task': the new task's rows; 'replay': ConPET dynamic-replay batches (new + stored old rows);
    'all': every task at once (multitask). (SAPT's pseudo-samples live in its selector.)"""
    regularizer: str | None = None
    description: str = ""


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("conpet", True, "selector", selector="conpet",
               description="Dynamic ConPET: one LoRA per task + a task classifier selector (top-k)"),
        Method("conpet_analytic", True, "selector", selector="analytic",
               selector_options=(("feature_source", "hidden"), ("feature_pooling", "last"), ("max_examples_per_task", 256)),
               description="Dynamic ConPET with a closed-form (ridge) router over frozen features: no replay, no drift"),
        Method("sapt", True, "selector", selector="sapt",
               description="SAPT: one LoRA per task mixed by shared attention, with attentive reflection"),
        Method("sapt_no_arm", True, "selector", selector="sapt", selector_options=(("use_arm", False),),
               description="SAPT without attentive reflection (ablation)"),
        Method("oracle", True, "oracle", description="One LoRA per task routed by the true task id (selector ceiling)"),
        Method("olora", True, "sum", selector="sum", regularizer="olora",
               description="O-LoRA: per-task LoRAs summed (in training too), orthogonality loss"),
        Method("replay", False, "shared", train_data="replay",
               description="Static ConPET: one shared LoRA trained with dynamic replay"),
        Method("seq_lora", False, "shared", description="One LoRA trained on each task in turn, no replay"),
        Method("multitask", False, "shared", train_data="all", description="One LoRA on all tasks at once (upper bound)"),
    )
}

SHARED_MODULE_NAME = "shared"


def config_selector(name: str) -> str:
    """The `ConPetConfig.selector` a method's system records: its selector kind, or 'none' for
    methods without a routing selector (O-LoRA's sum of modules is a selector of the harness only)."""
    from .config import SELECTORS

    kind = get_method(name).selector
    return kind if kind in SELECTORS else "none"


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"Unknown method {name!r}; choose one of {sorted(METHODS)}") from None
