"""Real learning on the offline default model (SmolLM2-135M-Instruct): kept few, marked slow.

One short stream (sst2 -> amazon, the embedded benchmark's data), one small budget, three methods in
the same run: one LoRA trained on each task in turn (seq_lora) forgets; ConPET's per-task modules
with a task classifier do not, and route without task ids; SAPT's shared attention with attentive
reflection keeps sst2 on its own module too. (Before ARM reflected on every step, SAPT forgot like
seq_lora here: AP 26.6, its attention sent sst2 prompts to the amazon module. Measured after the
change: AP 57.8, sst2 78.1 -> 81.2, amazon 34.4.)
Each new task module starts from the previous one (`new_task_init="previous"`): with a budget this
small, a fresh LoRA has not yet learned the answer format (measured: agnews 3% after 25 steps from
scratch, 56% when started from the sst2 module). With sst2 -> agnews -> copa and 20 steps, one shared
LoRA barely forgot (its final row 0.60/0.45/0.70 on 20 examples each), so that stream could not
show forgetting at this budget; after amazon it answers amazon's labels to sst2 (0.0 measured).

One free-text check: the default model learns SuperNI's sent140 (ROUGE-L) above its zero-shot score.
"""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from hf_conpet import ConPetConfig, ConPetModelForCausalLM
from hf_conpet.data import TaskStream
from hf_conpet.default_model import DEFAULT_DATA_DIR
from hf_conpet.trainer import ContinualTrainer

pytestmark = pytest.mark.slow

TASKS = ["sst2", "amazon"]
SUPERNI_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "superni"
STEPS, EVAL_EXAMPLES = 25, 32


@pytest.fixture(scope="module")
def base_path():
    from hf_conpet.default_model import resolve_base_model

    return resolve_base_model(None)


@pytest.fixture(scope="module")
def runs(base_path, tmp_path_factory, all_cores):
    """Train the stream once per method; every test reads these results."""
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    results = {}
    for method, selector in (("seq_lora", "none"), ("conpet", "conpet"), ("sapt", "sapt")):
        torch.manual_seed(0)
        stream = TaskStream.from_dir(DEFAULT_DATA_DIR, order=TASKS, tokenizer=tokenizer, max_test=EVAL_EXAMPLES)
        model = ConPetModelForCausalLM(
            AutoModelForCausalLM.from_pretrained(base_path),
            ConPetConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], selector=selector,
                         new_task_init="previous"),  # each task module starts from the last one
            tokenizer=tokenizer,
        )
        args = TrainingArguments(
            output_dir=str(tmp_path_factory.mktemp(method)), per_device_train_batch_size=8, learning_rate=5e-4,
            lr_scheduler_type="constant", logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=0,
        )
        metrics = ContinualTrainer(model, stream, args, method=method, batches_per_task=STEPS, max_length=128,
                                   max_eval_examples=EVAL_EXAMPLES, resume=False).fit()
        results[method] = metrics.summary()
        print(method, metrics.table())
    return results


def test_conpet_beats_sequential_lora(runs):
    assert runs["conpet"]["AP"] > runs["seq_lora"]["AP"] + 0.1, runs


def test_conpet_selector_routes_far_above_chance(runs):
    assert runs["conpet"]["selector_accuracy"] >= 0.8, runs  # chance is 1/2



def test_sapt_beats_sequential_lora(runs):
    assert runs["sapt"]["AP"] > runs["seq_lora"]["AP"] + 0.1, runs
    assert runs["sapt"]["F.Ra"] < runs["seq_lora"]["F.Ra"], runs  # reflection: less forgetting


def test_default_model_learns_a_free_text_superni_task_above_zero_shot(base_path, tmp_path, all_cores):
    """sent140 (SuperNI, scored by ROUGE-L with SuperNI's prompt): one task module trained for a few
    steps answers better than the base model alone, on the same prompts and generation budget.
    Measured: zero-shot 0.0 (the base model answers "1" / "2", the numbers the definition gives the
    two categories: often the right class, never the reference's word), trained 0.50."""
    from hf_conpet.evaluation import evaluate_task

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    stream = TaskStream.from_dir(SUPERNI_DIR, order=["sent140"], tokenizer=tokenizer, max_test=EVAL_EXAMPLES,
                                 template="superni")
    model = ConPetModelForCausalLM(
        AutoModelForCausalLM.from_pretrained(base_path),
        ConPetConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], selector="conpet"),
        tokenizer=tokenizer,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, learning_rate=5e-4,
        lr_scheduler_type="constant", logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=0,
    )
    metrics = ContinualTrainer(model, stream, args, method="conpet", batches_per_task=STEPS, max_length=256,
                               max_eval_examples=EVAL_EXAMPLES, resume=False).fit()
    trained = metrics.matrix[0][0]
    with model.disable_adapter():
        zero_shot = evaluate_task(model, stream["sent140"], stream.collator("causal_lm", "generate", max_length=256),
                                  tokenizer, routing="oracle", max_examples=EVAL_EXAMPLES)
    print(f"sent140 ROUGE-L: zero-shot {zero_shot.accuracy:.3f}, trained {trained:.3f}")
    assert metrics.task_metrics == ["rougeL"] and zero_shot.metric == "rougeL"
    assert trained >= zero_shot.accuracy + 0.1, (zero_shot.accuracy, trained, zero_shot.predictions[:8])
