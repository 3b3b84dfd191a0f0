"""Every auxiliary loss counts, once per optimizer step: classification heads and gradient accumulation."""

import copy

import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, ConPetModelForSequenceClassification
from hf_conpet.selectors import SaptSelector, TaskEndContext

from tiny_models import VOCAB, randomize_live_task, tiny_bert, tiny_llama


def prompts(n, length=6, seed=0):
    ids = torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def sapt_system(kind):
    """SAPT on a tiny model: task 0 finished (ARM target and pseudo-samples recorded), task 1 live."""
    if kind == "llama":
        model = ConPetModelForCausalLM(tiny_llama(), ConPetConfig(selector="sapt", r=2))
    else:
        base = tiny_bert()
        for module in base.modules():  # BERT's dropout would draw other masks for other batch shapes
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model = ConPetModelForSequenceClassification(base, ConPetConfig(selector="sapt", r=2))
    model.selector = SaptSelector.for_model(model, hidden=8, selection_lambda=1.0)
    model.add_task("first", labels=["a", "b"])
    randomize_live_task(model)
    model.freeze_tasks()
    train = prompts(60, seed=1)

    class Rows(dict):
        def __len__(self):
            return 60

        def select(self, indices):
            return {k: v[indices] for k, v in self.items()}

    model.selector.end_task(TaskEndContext(
        task_index=0, train=Rows(train), validation=prompts(4, seed=2), memory=None,
        features=lambda rows: model.prompt_features(rows["input_ids"], rows["attention_mask"]),
        batch_size=8, steps=0, replay_ratio=1.0, seed=0,
    ))
    model.add_task("second", labels=["c", "d"])
    randomize_live_task(model)  # a fresh LoRA's B is zero, so its A would get no gradient
    model.set_trainable(task=True, selector=True)
    return model


def test_the_classification_head_adds_the_selector_loss_and_it_reaches_the_query_network():
    model = sapt_system("bert").train()
    batch = prompts(4, seed=3)
    labels = torch.tensor([2, 3, 2, 3])  # union label space: task "second" owns columns 2 and 3
    output = model(**batch, labels=labels, task_ids=torch.full((4,), 1))
    ce = torch.nn.functional.cross_entropy(output.logits.float(), labels)
    assert output.loss > ce + 1e-4  # the selection and ARM terms are in the loss
    output.loss.backward()
    query_grads = [p.grad for p in model.selector.query.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in query_grads)


class Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows["input_ids"])

    def __getitem__(self, index):
        return {k: v[index] for k, v in self.rows.items()}


def one_step(model, rows, batch, accumulation, tmp_path):
    """One optimizer step (plain SGD) over the same 8 rows, in `accumulation` micro-batches."""
    args = TrainingArguments(
        str(tmp_path / f"run{accumulation}"), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
        remove_unused_columns=False, train_sampling_strategy="sequential", report_to=[], use_cpu=True,
        logging_strategy="no", save_strategy="no", disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=Rows(rows)).train()
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_accumulating_4x2_steps_like_1x8(kind, tmp_path):
    system = sapt_system(kind)
    rows = prompts(8, seed=4)
    if kind == "llama":  # a 2-token answer after a 6-token prompt, loss on the answer only
        answer = torch.randint(3, VOCAB, (8, 2), generator=torch.Generator().manual_seed(5))
        rows = {"input_ids": torch.cat([rows["input_ids"], answer], 1), "attention_mask": torch.ones(8, 8, dtype=torch.long),
                "labels": torch.cat([torch.full((8, 6), -100), answer], 1)}
    else:
        rows["labels"] = torch.tensor([2, 3] * 4)
    rows["task_ids"] = torch.ones(8, dtype=torch.long)  # every row is the live task's
    whole = one_step(copy.deepcopy(system), rows, batch=8, accumulation=1, tmp_path=tmp_path)
    accumulated = one_step(copy.deepcopy(system), rows, batch=2, accumulation=4, tmp_path=tmp_path)
    start = {name: p.detach() for name, p in system.named_parameters() if p.requires_grad}
    assert set(whole) == set(accumulated) and any("selector.query" in name for name in whole)
    for name in whole:
        assert not torch.equal(whole[name], start[name]), name  # the step moved it
        assert torch.allclose(whole[name], accumulated[name], atol=1e-6, rtol=1e-5), name
