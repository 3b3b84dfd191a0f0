"""TRL's SFTTrainer drives a continual stream of chat data through ContinualCallback, like the stock Trainer."""

from __future__ import annotations

import json

import pytest
import torch

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from hf_conpet import ConPetConfig, ConPetModelForCausalLM  # noqa: E402
from hf_conpet.callback import ContinualCallback  # noqa: E402
from hf_conpet.sft import chat_stream, sft_dataset  # noqa: E402
from hf_conpet.trainer import attach_method  # noqa: E402

from tiny_models import tiny_byte_tokenizer, tiny_llama_for  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
ANSWERS = {"colours": ["red", "blue"], "moods": ["happy", "sad"]}


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = tiny_byte_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def chats(task: str, count: int, conversational: bool = True) -> Dataset:
    rows = []
    for k in range(count):
        question, answer = f"{task} item {k}?", ANSWERS[task][k % 2]
        if conversational:
            rows.append({"messages": [{"role": "system", "content": "Answer in one word."},
                                      {"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
        else:
            rows.append({"prompt": [{"role": "user", "content": question}], "completion": [{"role": "assistant", "content": answer}]})
    return Dataset.from_list(rows)


def stream_of(tokenizer):
    return chat_stream({"colours": {"train": chats("colours", 16), "test": chats("colours", 4)},
                        "moods": {"train": chats("moods", 16, conversational=False), "test": chats("moods", 4, False)}},
                       tokenizer, validation_size=4)


def test_chat_stream_prompts_are_the_chat_template_up_to_the_answer(tokenizer):
    stream = stream_of(tokenizer)
    row = stream["colours"].test[0]
    assert row["output"] == "red" and stream["colours"].labels == ["blue", "red"]
    assert row["prompt"] == "<s>system\nAnswer in one word.</s>\n<s>user\ncolours item 0?</s>\n<s>assistant\n"
    assert stream["moods"].test[1]["prompt"].endswith("moods item 1?</s>\n<s>assistant\n")


def run(tokenizer, tmp_path, use_trl: bool):
    torch.manual_seed(0)
    model = ConPetModelForCausalLM(tiny_llama_for(tokenizer), ConPetConfig(selector="conpet", r=4), tokenizer=tokenizer)
    stream = stream_of(tokenizer)
    attach_method(model, "conpet")
    output = tmp_path / ("trl" if use_trl else "trainer")
    callback = ContinualCallback(model, stream, "conpet", output_dir=str(output), batch_size=4, batches_per_task=3,
                                 max_length=96, max_eval_examples=4, selector_steps=3, selector_batch_size=4)
    seen_batches = []
    for task in stream:
        model.add_task(task.name, labels=task.labels, instruction=task.instruction)
        if use_trl:
            args = trl.SFTConfig(str(output), max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3,
                                 report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
                                 disable_tqdm=True, max_length=96)
            trainer = trl.SFTTrainer(model=model, args=args, train_dataset=sft_dataset(callback, task),
                                     processing_class=tokenizer, callbacks=[callback])
            batch = next(iter(trainer.get_train_dataloader()))
            seen_batches.append(batch)
            trainer.train()
        else:
            args = TrainingArguments(str(output), max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3,
                                     remove_unused_columns=False, report_to=[], use_cpu=True, save_strategy="no",
                                     logging_strategy="no", disable_tqdm=True)
            Trainer(model=model, args=args, train_dataset=callback.train_dataset(task), data_collator=callback.data_collator,
                    callbacks=[callback]).train()
    return model, callback, output, seen_batches


def test_sft_trainer_trains_one_module_per_task_with_the_callbacks_rows_and_layout(tokenizer, tmp_path):
    model, callback, output, batches = run(tokenizer, tmp_path, use_trl=True)
    reference, reference_callback, reference_output, _ = run(tokenizer, tmp_path, use_trl=False)
    assert model.task_names == ["colours", "moods"] == reference.task_names
    # one module per task, each trained (non-zero B), the first left as it was when the second trained
    layer = next(iter(model.base_model.lora_layers().values()))
    assert layer.frozen_lora_B.shape[0] == 2 and all(layer.frozen_lora_B[t].abs().sum() > 0 for t in range(2))
    # completion-only loss: the prompt tokens carry no labels
    labels = batches[0]["labels"]
    assert (labels == -100).any() and (labels != -100).any() and "task_ids" not in batches[0]
    # the same between-task record in kind as the stock Trainer path
    assert [sum(v is not None for v in row) for row in callback.metrics.matrix] == [1, 2]
    assert [set(record) for record in callback.history] == [set(record) for record in reference_callback.history]
    files = {p.relative_to(output / "checkpoint").as_posix() for p in (output / "checkpoint").rglob("*") if p.is_file()}
    reference_files = {p.relative_to(reference_output / "checkpoint").as_posix()
                       for p in (reference_output / "checkpoint").rglob("*") if p.is_file()}
    assert files == reference_files
    assert json.loads((output / "checkpoint" / "progress.json").read_text())["finished"] == ["colours", "moods"]
    assert model.selector.num_tasks == 2 and callback.metrics.summary()["selector_accuracy"] is not None
