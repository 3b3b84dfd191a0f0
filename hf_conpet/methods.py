"""The methods of the harness: what each trains on a new task, and how it answers.

ConPET's dynamic method and SAPT grow one module per task and route without a task id; the
classic baselines train one shared module through the stream (sequential LoRA; EWC and LwF;
Static ConPET: replay, EWC or LwF with dynamic replay; multitask) or sum per-task modules
(O-LoRA). `oracle` is ConPET's modules routed by the true task id: the ceiling a selector can reach.

The system a run builds is described by its `ConPetConfig` (selector, regulariser, memory); a
method name is a preset of it (`method_config`), and a config that contradicts the method it is
trained with is refused by name (`check_method_config`), so the saved system, its card and the
Space describe what was actually trained.
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
               description="Static ConPET (EMR): one shared LoRA trained with dynamic replay"),
        Method("ewc_replay", False, "shared", train_data="replay", regularizer="ewc",
               description="Static ConPET (EWC): one shared LoRA, Fisher-weighted anchor and dynamic replay"),
        Method("lwf_replay", False, "shared", train_data="replay", regularizer="lwf",
               description="Static ConPET (LwF): one shared LoRA, distillation and dynamic replay"),
        Method("ewc", False, "shared", regularizer="ewc",
               description="EWC: one shared LoRA pulled towards what mattered to old tasks, no replay"),
        Method("lwf", False, "shared", regularizer="lwf",
               description="LwF: one shared LoRA distilled from the model before each task, no replay"),
        Method("seq_lora", False, "shared", description="One LoRA trained on each task in turn, no replay"),
        Method("multitask", False, "shared", train_data="all", description="One LoRA on all tasks at once (upper bound)"),
    )
}

SHARED_MODULE_NAME = "shared"
MULTITASK_MODULE_NAME = "multitask"


def config_selector(name: str) -> str:
    """The `ConPetConfig.selector` a method's system records: its selector kind, or 'none' for
    methods without a routing selector (O-LoRA's sum of modules is a selector of the harness only)."""
    from .config import SELECTORS

    kind = get_method(name).selector
    return kind if kind in SELECTORS else "none"


def method_config(name: str, **fields):
    """The `ConPetConfig` of method `name`: its selector, regulariser and selector options, with
    `fields` (rank, targets, memory, ...) on top; a field that contradicts the method is refused."""
    from .config import ConPetConfig

    method = get_method(name)
    preset = _preset(method)
    contradicted = [f"{key}={fields[key]!r} (the method's is {value!r})" for key, value in preset.items()
                    if key in fields and fields[key] != value]
    if contradicted:
        raise ValueError(f"method {name!r} fixes " + ", ".join(contradicted) + "; drop them or choose another method")
    options = {**dict(method.selector_options), **fields.pop("selector_options", {})}
    return ConPetConfig(**preset, selector_options=options, **fields)


def check_method_config(name: str, config) -> None:
    """Refuse, naming both, a `ConPetConfig` whose selector, regulariser or training data is not the method's:
    the saved system and its card would describe a system that was not trained."""
    expected = _preset(get_method(name))
    wrong = [f"{key}={getattr(config, key)!r} (method {name!r} trains {value!r})"
             for key, value in expected.items() if getattr(config, key) != value]
    if wrong:
        raise ValueError("ConPetConfig does not describe the method it is trained with: " + "; ".join(wrong)
                         + f". Build it with hf_conpet.method_config({name!r}, ...) or train the method it names.")


def _preset(method: Method) -> dict:
    """The `ConPetConfig` fields a method fixes."""
    return {"selector": config_selector(method.name), "regularizer": method.regularizer or "none",
            "train_data": method.train_data}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"Unknown method {name!r}; choose one of {sorted(METHODS)}") from None
