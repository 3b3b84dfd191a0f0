"""SAPT selector: shared soft attention over task keys, frozen old keys, attentive reflection, save/load."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, ConPetModelForSeq2SeqLM
from hf_conpet.model import RoutingError
from hf_conpet.selectors import SELECTOR_CLASSES, SaptSelector, TaskEndContext

from tiny_models import VOCAB, randomize_live_task, tiny_llama, tiny_t5


def make_model(kind="llama", **options):
    base = tiny_llama() if kind == "llama" else tiny_t5()
    cls = ConPetModelForCausalLM if kind == "llama" else ConPetModelForSeq2SeqLM
    reference = copy.deepcopy(base)
    model = cls(base, ConPetConfig(selector="sapt", r=2))
    model.selector = SaptSelector.for_model(model, hidden=8, **options)
    return model, reference


class Rows(dict):
    """Prompt tensors with the two `datasets.Dataset` calls a selector makes on training rows."""

    def __len__(self):
        return self["input_ids"].shape[0]

    def select(self, indices):
        return Rows({k: v[indices] for k, v in self.items()})


def prompts(batch=4, length=6, seed=0, lengths=None):
    """Right-padded prompts (pad id 0) of the given lengths."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    lengths = lengths or [length] * batch
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return Rows(input_ids=ids.masked_fill(~mask, 0), attention_mask=mask.long())


def with_answer(prompt, answer_length=2, seed=0):
    """A causal-LM training batch: prompt, then an answer; labels mark the answer only (as the collator does)."""
    batch_size, prompt_length = prompt["input_ids"].shape
    answer = torch.randint(3, VOCAB, (batch_size, answer_length), generator=torch.Generator().manual_seed(seed))
    return {
        "input_ids": torch.cat([prompt["input_ids"], answer], dim=1),
        "attention_mask": torch.cat([prompt["attention_mask"], torch.ones_like(answer)], dim=1),
        "labels": torch.cat([torch.full((batch_size, prompt_length), -100), answer], dim=1),
    }


def context(model, index, validation, batch_size=2, train=None):
    """A TaskEndContext whose `features` pools prompts batch by batch, as the callback's does."""

    def features(rows):
        return torch.cat([model.prompt_features(rows["input_ids"][start : start + batch_size],
                                                rows["attention_mask"][start : start + batch_size])
                          for start in range(0, rows["input_ids"].shape[0], batch_size)])

    if train is None:  # 60 training prompts: 2% -> 2 pseudo-samples
        train = prompts(batch=60, seed=100 + index, lengths=[6, 4, 5] * 20)
    return TaskEndContext(task_index=index, train=train, validation=validation, memory=None, features=features,
                          batch_size=batch_size, steps=0, replay_ratio=1.0, seed=index)


def finish(model, index, seed=10):
    """Give the live task random LoRA weights, freeze it, record its ARM target and pseudo-samples."""
    randomize_live_task(model)
    model.freeze_tasks()
    return model.selector.end_task(context(model, index, prompts(batch=5, seed=seed, lengths=[6, 3, 5, 2, 6])))


def trained_system(kind="llama", n_tasks=2):
    model, reference = make_model(kind)
    for index in range(n_tasks):
        model.add_task(f"task{index}")
        finish(model, index, seed=10 + index)
    return model.eval(), reference


def test_registered_and_sized_from_the_embeddings():
    model, _ = make_model()
    assert SELECTOR_CLASSES["sapt"] is SaptSelector
    selector = model.selector
    assert selector.hidden_size == 32 and selector.num_tasks == 0 and selector.routes_in_training
    model.add_task("a")
    with pytest.raises(ValueError, match="before the first add_task"):
        SaptSelector.for_model(model)
    with pytest.raises(ValueError, match="hidden must be"):
        SaptSelector(32, hidden=0)


def test_weights_are_soft_sum_to_one_and_one_task_gets_all():
    model, _ = make_model()
    model.add_task("first")
    batch = prompts()
    assert torch.equal(model.route(batch), torch.ones(4, 1))  # T = 1: all weight on the only task
    finish(model, 0)
    model.add_task("second")
    model.add_task("third")
    weights = model.route(batch)
    assert weights.shape == (4, 3)
    assert torch.allclose(weights.sum(-1), torch.ones(4), atol=1e-6)
    assert (weights > 0).all()
    plan = model.selector.plan(model.prompt_features(batch["input_ids"], batch["attention_mask"]))
    assert plan.indices is None and torch.equal(plan.weights, weights)  # dense: every task mixed


def test_query_max_pools_prompt_token_embeddings_only():
    model, _ = make_model()
    model.add_task("only")
    batch = prompts(batch=2, lengths=[4, 6])
    embeddings = model.get_base_model().get_input_embeddings()(batch["input_ids"])
    pooled = model.prompt_features(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(pooled[0], embeddings[0, :4].max(dim=0).values)
    assert torch.equal(pooled[1], embeddings[1].max(dim=0).values)
    # tokens outside the prompt (padding, answer) never change the query
    changed = batch["input_ids"].clone()
    changed[0, 4:] = 7
    assert torch.equal(model.prompt_features(changed, batch["attention_mask"]), pooled)


def test_old_keys_bit_identical_after_training_with_adamw_weight_decay():
    model, _ = make_model()
    model.add_task("task0")
    finish(model, 0)
    model.add_task("task1")
    finish(model, 1)
    model.add_task("task2")
    selector = model.selector
    frozen_before, targets_before = selector.frozen_keys.clone(), selector.arm_targets.clone()
    live_before = selector.live_key.detach().clone()
    query_before = [p.detach().clone() for p in selector.query.parameters()]
    model.set_trainable(task=True, selector=True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    selector_parameters = {"selector.live_key"} | {f"selector.query.{n}" for n, _ in selector.query.named_parameters()}
    assert {n for n in trainable if n.startswith("selector.")} == selector_parameters
    assert "frozen_keys" in dict(selector.named_buffers())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    model.train()
    for step in range(3):
        batch = with_answer(prompts(batch=4, seed=step, lengths=[6, 5, 4, 6]), seed=step)
        task_ids = torch.tensor([0, 1, 2, 2])
        output = model(**batch, task_ids=task_ids)  # old-task rows add the ARM term
        prompt_mask = model.prompt_mask(batch["input_ids"], batch["attention_mask"], batch["labels"])
        assert selector.training_plan(model.prompt_features(batch["input_ids"], prompt_mask), task_ids)[1] > 0
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.equal(selector.frozen_keys, frozen_before)
    assert torch.equal(selector.arm_targets, targets_before)
    assert not torch.equal(selector.live_key.detach(), live_before)
    assert all(not torch.equal(p, q) for p, q in zip(selector.query.parameters(), query_before))
    model.add_task("task3")  # the trained key is frozen bit for bit
    assert torch.equal(selector.frozen_keys[:2], frozen_before) and selector.frozen_keys.shape[0] == 3


def test_arm_target_is_the_mean_attention_over_validation():
    model, _ = make_model()
    model.add_task("task0")
    finish(model, 0)
    model.add_task("task1")
    randomize_live_task(model)
    validation = prompts(batch=5, seed=3, lengths=[6, 2, 4, 6, 1])
    expected = model.route(validation).mean(dim=0)  # all 5 at once, by hand
    figures = model.selector.end_task(context(model, 1, validation, batch_size=2))
    selector = model.selector
    assert torch.allclose(selector.arm_targets[1], expected, atol=1e-6)
    assert figures["arm_target"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert 0.0 <= figures["validation_selector_accuracy"] <= 1.0
    assert selector.arm_recorded.tolist() == [True, True] and selector.live_key is None
    model.add_task("task2")  # older targets are zero-padded for the new key
    assert selector.arm_targets.shape == (3, 3)
    assert torch.allclose(selector.arm_targets[1, :2], expected, atol=1e-6) and selector.arm_targets[1, 2] == 0
    assert selector.arm_recorded.tolist() == [True, True, False]


def learning_third_task(**options):
    """Two finished tasks (targets and pseudo-samples recorded), the third one being learned."""
    model, _ = make_model(**options)
    for index in range(2):
        model.add_task(f"task{index}")
        finish(model, index)
    model.add_task("task2")
    model.set_trainable(task=True, selector=True)
    return model


def parameters_with_gradient(model):
    return {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


QUERY_AND_LIVE_KEY = {"selector.live_key"} | {
    f"selector.query.{name}" for name in ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias")
}


def test_arm_gradient_reaches_only_query_network_and_current_key():
    model = learning_third_task()
    selector = model.selector
    batch = prompts(batch=4, seed=5)
    logits = selector.attention_logits(model.prompt_features(batch["input_ids"], batch["attention_mask"]))
    loss = selector.reflection_loss(logits, torch.tensor([0, 1, 2, 2]))
    loss.backward()
    assert parameters_with_gradient(model) == QUERY_AND_LIVE_KEY
    assert not selector.frozen_keys.requires_grad
    # the hand formula: lambda * mean over old-task rows of KL(target || softmax(logits))
    log_q = logits.detach()[:2].log_softmax(-1)
    kl = torch.stack([
        sum(p * (p.log() - log_q[row, j]) for j, p in enumerate(selector.arm_targets[row, : row + 1]))  # newer keys: 0 log 0 = 0
        for row in range(2)
    ])
    assert torch.allclose(loss.detach(), selector.arm_lambda * kl.mean(), atol=1e-6)


def test_no_arm_term_for_new_task_examples_first_task_or_ablation():
    model, _ = make_model()
    model.add_task("task0")
    batch = prompts()
    logits = model.selector.attention_logits(model.prompt_features(batch["input_ids"], batch["attention_mask"]))
    assert model.selector.reflection_loss(logits, torch.zeros(4, dtype=torch.long)) is None  # T = 1
    finish(model, 0)
    model.add_task("task1")
    logits = model.selector.attention_logits(model.prompt_features(batch["input_ids"], batch["attention_mask"]))
    assert model.selector.reflection_loss(logits, torch.ones(4, dtype=torch.long)) is None  # all new-task rows
    assert model.selector.reflection_loss(logits, None) is None
    assert model.selector.reflection_loss(logits, torch.tensor([0, 1, 1, 1])) is not None
    with pytest.raises(ValueError, match="out of range"):
        model.selector.reflection_loss(logits, torch.tensor([0, 1, 1, 5]))
    ablation, _ = make_model(use_arm=False)
    ablation.add_task("task0")
    finish(ablation, 0)
    ablation.add_task("task1")
    logits = ablation.selector.attention_logits(ablation.prompt_features(batch["input_ids"], batch["attention_mask"]))
    assert ablation.selector.reflection_loss(logits, torch.tensor([0, 0, 1, 1])) is None


def test_pseudo_samples_are_two_percent_of_train_stored_as_pooled_embeddings():
    model, _ = make_model()
    model.add_task("task0")
    randomize_live_task(model)
    model.freeze_tasks()
    train = prompts(batch=120, seed=7, lengths=[6, 2, 5, 4] * 30)
    figures = model.selector.end_task(context(model, 0, prompts(batch=3), train=train))
    selector = model.selector
    assert figures["pseudo_samples"] == 3  # ceil(2% of 120)
    assert selector.reflection_tasks.tolist() == [0, 0, 0]
    # each stored vector is the max-pooled prompt embedding of one training row
    every_row = model.prompt_features(train["input_ids"], train["attention_mask"])
    for vector in selector.reflection_inputs:
        assert any(torch.equal(vector, row) for row in every_row)
    model.add_task("task1")
    randomize_live_task(model)
    model.freeze_tasks()
    tiny = prompts(batch=5, seed=8)
    assert model.selector.end_task(context(model, 1, prompts(batch=3), train=tiny))["pseudo_samples"] == 1  # at least one
    assert selector.reflection_tasks.tolist() == [0, 0, 0, 1]
    ablation, _ = make_model(use_arm=False)
    ablation.add_task("task0")
    assert ablation.selector.end_task(context(ablation, 0, prompts(batch=3), train=train))["pseudo_samples"] == 0


def test_reflection_acts_every_training_step_on_the_bank_alone():
    """A batch of new-task rows only still pays the ARM term; it is the hand formula on the bank."""
    model = learning_third_task(selection_lambda=0.0)
    selector = model.selector
    batch = prompts(batch=4, seed=5)
    _, loss = selector.training_plan(model.prompt_features(batch["input_ids"], batch["attention_mask"]), torch.full((4,), 2))
    assert loss is not None
    loss.backward()
    assert parameters_with_gradient(model) == QUERY_AND_LIVE_KEY
    with torch.no_grad():
        log_q = (selector.query(selector.reflection_inputs) @ selector.keys.T / selector.hidden_size ** 0.5).log_softmax(-1)
        per_task = []
        for task in (0, 1):
            rows = (selector.reflection_tasks == task).nonzero().flatten()
            target = selector.arm_targets[task]
            kl = [sum(p * (p.log() - log_q[r, j]) for j, p in enumerate(target) if p > 0) for r in rows]
            per_task.append(torch.stack(kl).mean())
    assert torch.allclose(loss.detach(), selector.arm_lambda * torch.stack(per_task).mean(), atol=1e-6)
    ablation = learning_third_task(use_arm=False)
    assert ablation.selector.training_plan(ablation.prompt_features(batch["input_ids"], batch["attention_mask"]), None)[1] is None


def test_selection_loss_pulls_live_task_rows_to_the_live_key():
    """The small-budget deviation: CE towards the task being learned, on its rows only, with
    gradient to the query network and the live key; added to ARM in the training plan."""
    model = learning_third_task(selection_lambda=2.0, use_arm=False)
    selector = model.selector
    batch = prompts(batch=4, seed=5)
    task_ids = torch.tensor([2, 0, 2, 1])  # rows of old tasks never enter the term
    logits = selector.attention_logits(model.prompt_features(batch["input_ids"], batch["attention_mask"]))
    loss = selector.selection_loss(logits, task_ids)
    loss.backward()
    assert parameters_with_gradient(model) == QUERY_AND_LIVE_KEY
    log_p = logits.detach().log_softmax(-1)
    assert torch.allclose(loss.detach(), -2.0 * (log_p[0, 2] + log_p[2, 2]) / 2, atol=1e-6)
    assert selector.selection_loss(logits, torch.tensor([0, 1, 1, 0])) is None
    assert selector.selection_loss(logits, None) is None

    both = learning_third_task(selection_lambda=2.0)
    _, total = both.selector.training_plan(both.prompt_features(batch["input_ids"], batch["attention_mask"]), torch.full((4,), 2))
    both_logits = both.selector.attention_logits(both.prompt_features(batch["input_ids"], batch["attention_mask"]))
    expected = both.selector.selection_loss(both_logits, torch.full((4,), 2)) + both.selector.reflection_term()
    assert torch.allclose(total, expected, atol=1e-6)

    first, _ = make_model()
    first.add_task("task0")  # one key: nothing to separate
    only = first.selector.attention_logits(first.prompt_features(batch["input_ids"], batch["attention_mask"]))
    assert first.selector.selection_loss(only, torch.zeros(4, dtype=torch.long)) is None
    with pytest.raises(ValueError, match="selection_lambda"):
        SaptSelector(hidden_size=8, selection_lambda=-1)


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_training_plan_equals_inference_plan(kind):
    model, _ = make_model(kind)
    for index in range(2):
        model.add_task(f"task{index}")
        finish(model, index)
    model.add_task("task2")
    randomize_live_task(model)
    seen = []
    layer = next(iter(model.base_model.lora_layers().values()))
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(model.routing.plan.weights.detach().clone()))
    prompt = prompts(batch=3, lengths=[6, 4, 5])
    if kind == "llama":
        train_batch = with_answer(prompt)
    else:
        train_batch = {**prompt, "labels": torch.randint(3, VOCAB, (3, 3))}
    model.train()
    loss = model(**train_batch, task_ids=torch.tensor([0, 2, 1])).loss
    assert loss.requires_grad
    training_weights = seen[-1]
    model.eval()
    with torch.no_grad():
        extra = {"decoder_input_ids": torch.zeros(3, 1, dtype=torch.long)} if kind == "t5" else {}
        model(**prompt, **extra)
    handle.remove()
    assert torch.allclose(training_weights, seen[-1], atol=1e-6, rtol=0)
    assert torch.allclose(seen[-1], model.route(prompt), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_save_load_round_trip_routes_identically(kind, tmp_path):
    model, reference = trained_system(kind, n_tasks=2)
    model.add_task("task2")  # saved while a task is live: its key is saved too
    randomize_live_task(model)
    model.eval()
    model.save_pretrained(tmp_path / "system")
    selector_dir = tmp_path / "system" / "selector"
    assert sorted(p.name for p in selector_dir.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((selector_dir / "config.json").read_text())
    assert config == {"kind": "sapt", "hidden_size": 32, "hidden": 8, "arm_lambda": 0.5, "use_arm": True,
                      "num_tasks": 3, "live_task": True, "num_pseudo_samples": 4, "selection_lambda": 0.0}
    state = load_file(selector_dir / "model.safetensors")
    assert state["frozen_keys"].shape == (2, 32) and state["arm_targets"].shape == (3, 3)
    assert state["reflection_inputs"].shape == (4, 32) and state["reflection_tasks"].tolist() == [0, 0, 1, 1]
    assert state["arm_recorded"].tolist() == [True, True, False]
    loaded = type(model).from_pretrained(tmp_path / "system", base_model=copy.deepcopy(reference)).eval()
    assert isinstance(loaded.selector, SaptSelector) and loaded.selector.get_config() == model.selector.get_config()
    for key, value in model.selector.state_dict().items():
        assert torch.equal(loaded.selector.state_dict()[key], value)
    batch = prompts(batch=3, lengths=[6, 3, 5])
    if kind == "t5":
        batch["decoder_input_ids"] = torch.randint(3, VOCAB, (3, 2))
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)  # no task ids: routed by SAPT
    loaded.add_task("task3")  # and the stream goes on
    assert loaded.selector.num_tasks == 4 and loaded.selector.frozen_keys.shape[0] == 3


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_generate_without_task_ids_routes_once_on_the_prompt(kind):
    model, _ = trained_system(kind, n_tasks=3)
    batch = prompts(batch=3, lengths=[6, 4, 6])
    if kind == "llama":  # generation pads on the left
        batch = {k: torch.flip(v, dims=[1]) for k, v in batch.items()}
    seen = []
    layer = next(iter(model.base_model.lora_layers().values()))
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(model.routing.plan))
    routed = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0)
    handle.remove()
    assert len({id(plan) for plan in seen}) == 1  # one plan for every decoding step
    weights = model.route(batch)
    assert torch.equal(seen[0].weights, weights)
    explicit = model.generate(**batch, routing_weights=weights, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(routed, explicit)


def test_config_round_trip_and_clear_errors():
    model, _ = trained_system("llama", n_tasks=2)
    selector = model.selector
    rebuilt = SaptSelector.from_config(json.loads(json.dumps(selector.get_config())))
    rebuilt.load_state_dict(selector.state_dict(), strict=True)  # shapes follow from the config alone
    assert rebuilt.get_config() == selector.get_config() and rebuilt.live_key is None
    with pytest.raises(ValueError, match="Unknown SaptSelector config keys"):
        SaptSelector.from_config({**selector.get_config(), "temperature": 2.0})
    model.selector = SaptSelector.for_model(make_model()[0])  # a fresh selector on a model with tasks
    with pytest.raises(RoutingError, match="outputs for 0 tasks but the model has 2"):
        model.route(prompts())
    with pytest.raises(RoutingError, match="outputs for 0 tasks but the model has 2"):
        model.add_task("late")
    assert model.task_names == ["task0", "task1"]  # the refused add_task changed nothing
