"""The demo of an hf_conpet system (the Space's page, `hf-conpet demo`): type an input, see which
task the selector picks and the answer.

The point of the demo is the part peers lack: one model, many tasks, and no task id at inference.
So the page shows the selector's task probabilities next to the routed, greedy answer, and the
system's own record (tasks, accuracy matrix, forgetting figures) from its manifest.

Which system: `hf-conpet demo DIR|REPO_ID`, or in the Space (`spaces/app.py`) `HF_CONPET_SYSTEM`
(a Hub repo id or a local folder), else `runs/quickstart/model` (what `hf-conpet run --output
runs/quickstart` writes). Needs the `demo` extra (`pip install hf-conpet[demo]`: gradio).

The UI is built by `build_demo(model, tokenizer)` so tests can wrap a tiny model in it.
"""

from __future__ import annotations

import os

# Before gradio is imported: a demo of an offline-first library sends no usage pings.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Mapping  # noqa: E402

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from . import ConPetModelForCausalLM  # noqa: E402
from .data import DEFAULT_TEMPLATE, CausalLMGenerationCollator  # noqa: E402
from .evaluation import saved_answer_budget  # noqa: E402
from .methods import MULTITASK_MODULE_NAME, SHARED_MODULE_NAME  # noqa: E402
from .model_card import system_description  # noqa: E402
from .scoring import score_name  # noqa: E402
from .names import MANIFEST_NAME, MATRIX_IMAGE_NAME  # noqa: E402

SYSTEM_ENV = "HF_CONPET_SYSTEM"
DEFAULT_SYSTEM = Path("runs") / "quickstart" / "model"
NO_INSTRUCTION = "__none__"
MAX_LENGTH = 192  # the CLI's default prompt budget, used when the run did not record its own
SUMMARY_ROWS = (  # (key in the manifest's metrics summary, what the page calls it)
    ("AP", "AP: mean accuracy after the last task"),
    ("F.Ra", "F.Ra: mean forgetting"),
    ("BWT", "BWT: backward transfer"),
    ("FWT", "FWT: forward transfer"),
    ("selector_accuracy", "selector accuracy (no task id)"),
)


class SystemNotFoundError(FileNotFoundError):
    """`HF_CONPET_SYSTEM` (or the default folder) names no loadable hf_conpet system."""


# ----------------------------------------------------------------------------- loading
def system_source(environ: Mapping[str, str] | None = None) -> str:
    """The system to serve: `HF_CONPET_SYSTEM`, else the quickstart run's folder if it exists."""
    environ = os.environ if environ is None else environ
    chosen = (environ.get(SYSTEM_ENV) or "").strip()
    if chosen:
        return chosen
    for candidate in (DEFAULT_SYSTEM, Path(__file__).resolve().parent.parent / DEFAULT_SYSTEM):
        if (candidate / MANIFEST_NAME).is_file():
            return str(candidate)
    raise SystemNotFoundError(
        f"No system to serve: set {SYSTEM_ENV} to a Hub repo id (user/repo) or to a folder written by "
        f"save_pretrained, or train one first with `hf-conpet run --output runs/quickstart` "
        f"(looked for ./{DEFAULT_SYSTEM.as_posix()})"
    )


def _looks_local(source: str) -> bool:
    """A path rather than a Hub id: the Hub never sees it, so a missing folder is a local mistake."""
    return os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") != 1


def resolve_system(source: str) -> Path:
    """A local folder holding the system's layout (a Hub repo is downloaded, layout files only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return path
        if (path / "model" / MANIFEST_NAME).is_file():  # the output folder of `hf-conpet run`
            return path / "model"
        raise SystemNotFoundError(f"{SYSTEM_ENV}={source!r}: {path} is not an hf_conpet system (no {MANIFEST_NAME})")
    if _looks_local(source):
        raise SystemNotFoundError(f"{SYSTEM_ENV}={source!r}: no such folder, and it is not a Hub repo id (user/repo)")
    from .hub import download_system

    try:
        return Path(download_system(source))
    except Exception as error:  # noqa: BLE001 - one clear line: which repo, what went wrong
        raise SystemNotFoundError(
            f"{SYSTEM_ENV}={source!r}: cannot fetch this Hub repo as an hf_conpet system: {type(error).__name__}: {error}"
        ) from error


def load_system(source: str | None = None):
    """(model, tokenizer) for `source` (default: `system_source()`), ready for inference."""
    folder = resolve_system(source or system_source())
    model = ConPetModelForCausalLM.from_pretrained(folder)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise SystemNotFoundError(f"{folder}: its base model has no tokenizer to load; the demo needs one")
    model.system_folder = str(folder)  # where build_demo finds the accuracy-matrix image
    if torch.cuda.is_available():
        model.to("cuda")
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- the system's record
def _manifest_metrics(model) -> dict[str, Any] | None:
    """The metrics saved with the system, while its task list is still the one they describe."""
    folder = getattr(model, "system_folder", None)
    if not folder:
        return None
    from .saved_layout import read_manifest

    metrics = read_manifest(Path(folder)).get("metrics")
    if not isinstance(metrics, dict) or (metrics.get("task_names") or model.task_names) != model.task_names:
        return None
    return metrics


def _matrix_image(model, metrics: Mapping[str, Any] | None) -> str | None:
    """The saved accuracy-matrix PNG, or one drawn from the metrics (a bare save_pretrained has none)."""
    folder = getattr(model, "system_folder", None)
    if folder and (Path(folder) / MATRIX_IMAGE_NAME).is_file():
        return str(Path(folder) / MATRIX_IMAGE_NAME)
    matrix = None if metrics is None else metrics.get("accuracy_matrix", metrics.get("matrix"))
    if not matrix:
        return None
    from .plots import plot_accuracy_matrix

    names = metrics.get("task_names") or model.task_names
    path = Path(tempfile.mkdtemp(prefix="hf_conpet_space_")) / MATRIX_IMAGE_NAME
    try:
        measured = score_name(metrics.get("task_metrics") or [metrics.get("metric") or "exact_match"])
        plot_accuracy_matrix(matrix, names, path, title=f"{measured} after each task", score_name=measured)
    except ValueError:  # a malformed matrix hides the plot; it does not take the demo down
        return None
    return str(path)


def _summary_rows(metrics: Mapping[str, Any] | None) -> list[list[str]]:
    summary = (metrics or {}).get("summary") or {}
    rows = []
    for key, title in SUMMARY_ROWS:
        value = summary.get(key)
        if isinstance(value, (int, float)):
            rows.append([title, f"{value:.3f}"])
    return rows


def _saved_examples(model) -> list[list[str]]:
    """[input, true task] rows of the examples saved with the system (none: an empty list)."""
    folder = getattr(model, "system_folder", None)
    if not folder:
        return []
    from .saved_layout import read_examples

    try:
        return [[row["input"], row["task"]] for row in read_examples(Path(folder))]
    except ValueError:  # a malformed examples.json hides the examples; it does not take the demo down
        return []


def _task_rows(model) -> list[list[str]]:
    return [[str(i), t.name, ", ".join(t.labels) if t.labels else "free text", t.instruction or "-"]
            for i, t in enumerate(model.tasks)]


# ----------------------------------------------------------------------------- inference
def build_prompt(model, text: str, task_name: str | None) -> str:
    """The training prompt format: with a task's instruction prefixed, or the bare input."""
    if task_name and task_name != NO_INSTRUCTION:
        task = model.tasks[model.task_index(task_name)]
        template = task.metadata.get("prompt_template") or DEFAULT_TEMPLATE  # the one it was trained with
        return template.format(instruction=task.instruction or "", input=text,
                               labels=", ".join(task.labels or []), task=task.name)
    if text.rstrip().endswith("Output:"):  # already a whole prompt
        return text.rstrip() + " "
    return f"{text}\nOutput: "


class _Answerer:
    """Encodes a prompt as evaluation does and answers it greedily: what both handlers share."""

    def __init__(self, model, tokenizer, max_new_tokens: int | None, max_length: int | None):
        metrics = _manifest_metrics(model) or {}
        max_length = max_length or (metrics.get("run") or {}).get("max_length") or MAX_LENGTH
        self.model, self.tokenizer = model, tokenizer
        self.collate = CausalLMGenerationCollator(tokenizer, max_length=max_length)  # the encoding eval uses
        self.budget = max_new_tokens or saved_answer_budget(model.tasks, tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def encode(self, prompt: str) -> dict[str, torch.Tensor]:
        batch = self.collate([{"prompt": prompt, "task_id": 0}])
        device = self.model._device
        return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}

    def answer(self, inputs: dict[str, torch.Tensor], **routing) -> str:
        with torch.no_grad():
            generated = self.model.generate(**inputs, **routing, max_new_tokens=self.budget, do_sample=False,
                                            pad_token_id=self.pad)
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        # The first line is the answer, as evaluation reads it; splitlines also ends it at "\r" (which
        # a textarea would show as a line break), not only at "\n".
        return (self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)[0].strip().splitlines() or [""])[0]


def _routed(model, answerer: _Answerer, text: str, instruction: str | None):
    """(probabilities, routed answer, prompt, encoded inputs) of one input."""
    if not (text or "").strip():
        raise gr.Error("Type an input first.")
    prompt = build_prompt(model, text, instruction)
    inputs = answerer.encode(prompt)
    routing: dict[str, Any] = {}
    if model.selector is not None:
        probabilities = model.route(inputs)[0].tolist()
    elif model.num_tasks == 1 or (instruction and instruction != NO_INSTRUCTION):
        # No selector (trained with task ids): the only task, or the one whose instruction was picked.
        index = 0 if model.num_tasks == 1 else model.task_index(instruction)
        routing = {"task_ids": torch.tensor([index], device=model._device)}
        probabilities = [float(i == index) for i in range(model.num_tasks)]
    else:
        raise gr.Error("This system has no selector (it was trained with task ids): pick a task's instruction.")
    return dict(zip(model.task_names, probabilities)), answerer.answer(inputs, **routing), prompt, inputs


def make_predict(model, tokenizer, max_new_tokens: int | None = None, max_length: int | None = None):
    """The click handler: (input, instruction choice) -> (task probabilities, answer, prompt)."""
    answerer = _Answerer(model, tokenizer, max_new_tokens, max_length)
    # No lock: each call's routing plan is its own (a ContextVar), so two requests at once (click and
    # Enter are separate events, each with its own queue) cannot see each other's plans.

    def predict(text: str, instruction: str | None):
        probabilities, answer, prompt, _ = _routed(model, answerer, text, instruction)
        return probabilities, answer, prompt

    return predict


def make_compare(model, tokenizer, max_new_tokens: int | None = None, max_length: int | None = None):
    """The "force a task" handler: (input, instruction choice, forced task) -> (routed task,
    routed answer, forced task's answer), to see what routing changed."""
    answerer = _Answerer(model, tokenizer, max_new_tokens, max_length)

    def compare(text: str, instruction: str | None, forced: str):
        if forced not in model.task_names:
            raise gr.Error(f"Pick the task to force (one of {', '.join(model.task_names)}).")
        probabilities, routed_answer, _, inputs = _routed(model, answerer, text, instruction)
        task_ids = torch.tensor([model.task_index(forced)], device=model._device)
        return max(probabilities, key=probabilities.get), routed_answer, answerer.answer(inputs, task_ids=task_ids)

    return compare


# ----------------------------------------------------------------------------- the page
def build_demo(model, tokenizer, *, title: str | None = None, max_new_tokens: int | None = None) -> gr.Blocks:
    """The Space's page around a loaded system; nothing is launched here."""
    if model.num_tasks == 0:
        raise ValueError("The system has no tasks: nothing to demo")
    model.eval()
    metrics = _manifest_metrics(model)
    image = _matrix_image(model, metrics)
    summary = _summary_rows(metrics)
    base = getattr(model.get_base_model().config, "_name_or_path", "") or "a base model"
    selector = getattr(model.selector, "kind", None)
    choices = [("no instruction", NO_INSTRUCTION)] + [
        (f"{task.name}: {task.instruction}", task.name) for task in model.tasks if task.instruction
    ]
    title = title or "hf_conpet: one model, many tasks, no task id"
    if selector:
        system = (f"**{model.num_tasks}** task LoRAs learned one after another; a **{selector}** selector routes "
                  "each input to its task's LoRA.")
    elif model.num_tasks == 1 and model.task_names[0] in (SHARED_MODULE_NAME, MULTITASK_MODULE_NAME):
        # Static ConPET and the other one-module baselines: say which, as the card does
        one_line, _, method = system_description(model.conpet_config.to_dict(), model.task_names)
        system = f"{one_line} {method}"
    else:
        system = (f"**{model.num_tasks}** task LoRAs learned one after another; **no selector**: the chosen "
                  "instruction's task module answers.")
    predict = make_predict(model, tokenizer, max_new_tokens=max_new_tokens)

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}\n"
            f"`{base}` with {system} "
            "Type an input, optionally prefix a task's instruction, and see where it is routed and what "
            "the routed model answers (greedy)."
        )
        with gr.Row():
            with gr.Column(scale=3):
                text = gr.Textbox(label="Input", lines=4, placeholder="Great pasta, rude waiter.")
                instruction = gr.Dropdown(choices=choices, value=NO_INSTRUCTION, label="Instruction prefix")
                run = gr.Button("Route and answer", variant="primary")
            with gr.Column(scale=2):
                probabilities = gr.Label(label="Selector: task probabilities", num_top_classes=min(model.num_tasks, 10))
                answer = gr.Textbox(label="Answer (routed, no task id)", interactive=False)
        with gr.Accordion("Prompt sent to the model", open=False):
            prompt = gr.Textbox(show_label=False, lines=4, interactive=False)
        examples = _saved_examples(model)
        true_task = gr.Textbox(label="True task of the example (the selector does not see it)", interactive=False,
                               visible=bool(examples))
        if examples:
            gr.Examples(examples=examples, inputs=[text, true_task], label="Test inputs saved with the system")
        with gr.Accordion("Force a task: the routed answer beside a chosen task module's", open=False):
            with gr.Row():
                forced = gr.Dropdown(choices=model.task_names, value=model.task_names[0], label="Task module to force")
                compare_button = gr.Button("Compare")
            with gr.Row():
                routed_task = gr.Textbox(label="Routed to", interactive=False)
                routed_answer = gr.Textbox(label="Routed answer", interactive=False)
                forced_answer = gr.Textbox(label="Forced task's answer", interactive=False)
        with gr.Accordion("The system", open=True):
            gr.Dataframe(value=_task_rows(model), headers=["#", "task", "labels", "instruction"],
                         interactive=False, wrap=True, label="Tasks, in training order")
            with gr.Row():
                if summary:
                    with gr.Column(scale=2):
                        gr.Dataframe(value=summary, headers=["metric", "value"], interactive=False,
                                     label="Continual metrics")
                if image:
                    with gr.Column(scale=3):
                        # No label overlay: it would hide the plot's own title; the axes say what is what.
                        gr.Image(value=image, show_label=False, interactive=False, type="filepath", height=420)
                if not summary and not image:
                    gr.Markdown("*No metrics were saved with this system.*")
        run.click(predict, inputs=[text, instruction], outputs=[probabilities, answer, prompt], api_name="predict")
        text.submit(predict, inputs=[text, instruction], outputs=[probabilities, answer, prompt], api_name=False)
        compare_button.click(make_compare(model, tokenizer, max_new_tokens=max_new_tokens), inputs=[text, instruction, forced],
                             outputs=[routed_task, routed_answer, forced_answer], api_name="compare")
    return demo


def serve(source: str | None = None, **launch_options):
    """Load `source` (default: `system_source()`) and launch its page; what `hf-conpet demo` runs."""
    model, tokenizer = load_system(source)
    return build_demo(model, tokenizer).launch(**launch_options)
