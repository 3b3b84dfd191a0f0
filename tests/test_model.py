"""The foundation: task-stacked routed LoRA equals plain PEFT, mixes per example, freezes, saves."""

import copy
import json

import pytest
import torch
from peft import PeftModel

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, ConPetModelForSeq2SeqLM, ConPetModelForSequenceClassification
from hf_conpet.layers import RoutingContext, RoutingPlan, TaskStackedLoraLinear
from hf_conpet.model import IncompatibleBaseModelError, RoutingError

from tiny_models import VOCAB, randomize_live_task, tiny_bert, tiny_llama, tiny_t5

TASKS = ["sst2", "agnews", "copa"]


def build(kind="llama", n_tasks=3, config=None):
    """A ConPet model with `n_tasks` tasks of random non-zero LoRA weights, plus a pristine base copy."""
    if kind == "llama":
        base, cls = tiny_llama(), ConPetModelForCausalLM
    elif kind == "t5":
        base, cls = tiny_t5(), ConPetModelForSeq2SeqLM
    else:
        base, cls = tiny_bert(), ConPetModelForSequenceClassification
    reference = copy.deepcopy(base)
    model = cls(base, config or ConPetConfig(selector="none"))
    for index in range(n_tasks):
        model.add_task(f"task{index}", labels=["yes", "no", "maybe"][: 2 + index % 2])
        randomize_live_task(model)
    model.freeze_tasks()
    return model.eval(), reference


def inputs(batch=3, length=7, seed=1):
    torch.manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def t5_inputs(batch=3):
    batch_inputs = inputs(batch)
    batch_inputs["decoder_input_ids"] = torch.randint(3, VOCAB, (batch, 4))
    return batch_inputs


def peft_reference(reference_base, saved_dir, task, num_labels=None):
    base = copy.deepcopy(reference_base)
    if num_labels is not None:  # plain PEFT loads the task head into a classifier of the task's size
        base = tiny_bert(num_labels=num_labels)
        encoder = {k: v for k, v in reference_base.state_dict().items() if not k.startswith("classifier")}
        base.load_state_dict(encoder, strict=False)
    return PeftModel.from_pretrained(base, saved_dir, subfolder=f"tasks/{task}").eval()


@pytest.mark.parametrize("kind", ["llama", "t5", "bert"])
def test_routed_output_equals_plain_peft_per_task(kind, tmp_path):
    model, reference = build(kind)
    model.save_pretrained(tmp_path / "system")
    batch = t5_inputs() if kind == "t5" else inputs()
    for index in range(model.num_tasks):
        ours = model(**batch, task_ids=torch.full((3,), index)).logits
        num_labels = len(model.tasks[index].labels) if kind == "bert" else None
        theirs = peft_reference(reference, tmp_path / "system", f"task{index}", num_labels)(**batch).logits
        if kind == "bert":  # our logits span the union of labels; the task's own columns must match
            offset = model.label_offset(index)
            ours = ours[:, offset : offset + theirs.shape[-1]]
        assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["llama", "t5", "bert"])
def test_mixed_batch_equals_each_example_alone(kind):
    model, _ = build(kind)
    batch = t5_inputs(batch=3) if kind == "t5" else inputs(batch=3)
    task_ids = torch.tensor([2, 0, 1])
    mixed = model(**batch, task_ids=task_ids).logits
    for row in range(3):
        alone = model(**{k: v[row : row + 1] for k, v in batch.items()}, task_ids=task_ids[row : row + 1]).logits
        assert (mixed[row : row + 1] - alone).abs().max() <= 1e-5


def make_layer(n_tasks=4):
    torch.manual_seed(0)
    routing = RoutingContext()
    layer = TaskStackedLoraLinear(torch.nn.Linear(6, 5), r=2, lora_alpha=4, lora_dropout=0.0, routing=routing)
    for _ in range(n_tasks):
        layer.add_task()
        with torch.no_grad():
            layer.live_lora_B.normal_()
    return layer, routing


def test_soft_weights_are_the_weighted_sum_of_per_task_outputs():
    layer, routing = make_layer(n_tasks=4)  # the last task stays live: both stacks are exercised
    x = torch.randn(3, 5, 6)
    weights = torch.softmax(torch.randn(3, 4), dim=-1)
    with routing.use(RoutingPlan(weights=weights)):
        soft = layer(x)
    base = layer.base_layer(x)
    expected = base.clone()
    for task in range(4):
        with routing.use(RoutingPlan.from_task_ids(torch.full((3,), task))):
            expected += weights[:, task, None, None] * (layer(x) - base)
    assert (soft - expected).abs().max() <= 1e-5
    # top-k sparse weights over two tasks agree with the dense path holding zeros elsewhere
    sparse = RoutingPlan(weights=torch.tensor([[0.7, 0.3]] * 3), indices=torch.tensor([[0, 3], [1, 2], [3, 0]]))
    dense = torch.zeros(3, 4)
    dense.scatter_(1, sparse.indices, sparse.weights)
    with routing.use(sparse):
        a = layer(x)
    with routing.use(RoutingPlan(weights=dense)):
        b = layer(x)
    assert (a - b).abs().max() <= 1e-5


def test_generation_plan_repeats_for_beams():
    plan = RoutingPlan.from_task_ids(torch.tensor([0, 2]))
    expanded = plan.for_batch(6)
    assert expanded.indices.view(-1).tolist() == [0, 0, 0, 2, 2, 2]
    with pytest.raises(ValueError, match="batch of 5"):
        plan.for_batch(5)


def test_plan_select_keeps_the_chosen_examples_rows():
    sparse = RoutingPlan(weights=torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.5, 0.5]]), indices=torch.tensor([[1, 0], [2, 1], [0, 2]]))
    picked = sparse.select(torch.tensor([2, 0]))
    assert picked.indices.tolist() == [[0, 2], [1, 0]]
    assert torch.equal(picked.weights, sparse.weights[[2, 0]])
    dense = RoutingPlan(weights=torch.eye(3)).select(torch.tensor([1]))
    assert dense.indices is None and dense.weights.tolist() == [[0.0, 1.0, 0.0]]


def test_training_the_new_task_leaves_old_tasks_bit_identical():
    model, _ = build("llama", n_tasks=2)
    layers = model.base_model.lora_layers()
    before = {path: (layer.frozen_lora_A.clone(), layer.frozen_lora_B.clone()) for path, layer in layers.items()}
    base_before = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "lora" not in k}
    model.add_task("task2")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert set(map(id, trainable)) == set(map(id, model.trainable_parameters().values()))
    assert len(trainable) == 2 * len(layers)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(3):
        batch = inputs(batch=4, seed=step)
        loss = model(**batch, labels=batch["input_ids"], task_ids=torch.tensor([0, 1, 2, 2])).loss
        loss.backward()
        for name, parameter in model.named_parameters():
            if parameter.grad is not None:
                assert ".live_lora_" in name
        optimizer.step()
        optimizer.zero_grad()
    for path, layer in layers.items():
        assert layer.num_tasks == 3
        assert torch.equal(layer.frozen_lora_A, before[path][0])
        assert torch.equal(layer.frozen_lora_B, before[path][1])
        assert not torch.equal(layer.live_lora_B, torch.zeros_like(layer.live_lora_B))  # it did learn
    for key, value in model.get_base_model().state_dict().items():
        if key in base_before:
            assert torch.equal(value, base_before[key])


def test_add_task_previous_init_starts_from_last_task():
    model, _ = build("llama", n_tasks=1, config=ConPetConfig(selector="none", new_task_init="previous"))
    model.add_task("second")
    for layer in model.base_model.lora_layers().values():
        assert torch.equal(layer.live_lora_A, layer.frozen_lora_A[0])
        assert torch.equal(layer.live_lora_B, layer.frozen_lora_B[0])


@pytest.mark.parametrize("kind", ["llama", "t5", "bert"])
def test_save_load_round_trip(kind, tmp_path):
    model, reference = build(kind)
    model.save_pretrained(tmp_path / "system")
    files = sorted(str(p.relative_to(tmp_path / "system")) for p in (tmp_path / "system").rglob("*") if p.is_file())
    assert files == ["conpet_config.json"] + [
        f"tasks/task{i}/{name}" for i in range(3) for name in ("adapter_config.json", "adapter_model.safetensors")
    ]
    manifest = json.loads((tmp_path / "system" / "conpet_config.json").read_text())
    assert [t["name"] for t in manifest["tasks"]] == ["task0", "task1", "task2"]
    loaded = type(model).from_pretrained(tmp_path / "system", base_model=copy.deepcopy(reference)).eval()
    assert loaded.task_names == model.task_names
    batch = t5_inputs() if kind == "t5" else inputs()
    task_ids = torch.tensor([1, 2, 0])
    assert torch.equal(loaded(**batch, task_ids=task_ids).logits, model(**batch, task_ids=task_ids).logits)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_load_then_continue_with_a_new_task(tmp_path):
    model, reference = build("llama", n_tasks=2)
    model.save_pretrained(tmp_path / "system")
    loaded = ConPetModelForCausalLM.from_pretrained(tmp_path / "system", base_model=copy.deepcopy(reference))
    loaded.add_task("more")
    assert loaded.num_tasks == 3 and len(loaded.trainable_parameters()) == 2 * len(loaded.base_model.lora_layers())


def test_generate_routes_like_the_single_task_peft_model(tmp_path):
    for kind in ("llama", "t5"):
        model, reference = build(kind)
        model.save_pretrained(tmp_path / kind)
        batch = inputs(batch=3)
        task_ids = torch.tensor([0, 2, 1])
        ours = model.generate(**batch, task_ids=task_ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        for row, task in enumerate(task_ids.tolist()):
            single = peft_reference(reference, tmp_path / kind, f"task{task}")
            theirs = single.generate(**{k: v[row : row + 1] for k, v in batch.items()}, max_new_tokens=6, do_sample=False, pad_token_id=0)
            assert ours[row].tolist() == theirs[0].tolist()


def test_beam_search_keeps_each_prompts_routing(tmp_path):
    model, _ = build("llama")
    batch = inputs(batch=2)
    task_ids = torch.tensor([2, 0])
    beams = model.generate(**batch, task_ids=task_ids, max_new_tokens=4, num_beams=3, do_sample=False, pad_token_id=0)
    for row in range(2):
        alone = model.generate(**{k: v[row : row + 1] for k, v in batch.items()}, task_ids=task_ids[row : row + 1], max_new_tokens=4, num_beams=3, do_sample=False, pad_token_id=0)
        assert beams[row].tolist() == alone[0].tolist()


# ----- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "../x", "a/b", "1task", "has space", "x" * 65, None, "tâche"])
def test_bad_task_names(name):
    model, _ = build("llama", n_tasks=0)
    with pytest.raises(ValueError, match="ask name"):
        model.add_task(name)
    assert model.num_tasks == 0
    assert all(layer.num_tasks == 0 for layer in model.base_model.lora_layers().values())


def test_duplicate_task_name():
    model, _ = build("llama", n_tasks=1)
    with pytest.raises(ValueError, match="already registered"):
        model.add_task("task0")


def test_routing_errors():
    model, _ = build("llama")
    batch = inputs(batch=3)
    with pytest.raises(RoutingError, match="out of range"):
        model(**batch, task_ids=torch.tensor([0, 1, 3]))
    with pytest.raises(RoutingError, match="out of range"):
        model(**batch, task_ids=torch.tensor([0, -1, 1]))
    with pytest.raises(RoutingError, match="3 entries for a batch of 3|entries for a batch"):
        model(**batch, task_ids=torch.tensor([0, 1]))
    with pytest.raises(RoutingError, match=r"shape \[batch, num_tasks\]"):
        model(**batch, routing_weights=torch.ones(3, 2))
    with pytest.raises(RoutingError, match="not both"):
        model(**batch, task_ids=torch.tensor([0, 1, 2]), routing_weights=torch.ones(3, 3))
    with pytest.raises(RoutingError, match="no selector"):
        model(**batch)
    with pytest.raises(RoutingError, match="no selector"):
        model.generate(**batch, max_new_tokens=2)
    empty, _ = build("llama", n_tasks=0)
    with pytest.raises(RoutingError, match="no tasks"):
        empty(**batch, task_ids=torch.tensor([0, 0, 0]))


def test_bad_config_values():
    for bad in ({"r": 0}, {"top_k": 0}, {"target_modules": []}, {"selector": "magic"}, {"lora_dropout": 1.5}):
        with pytest.raises(ValueError, match="Invalid ConPetConfig"):
            ConPetConfig(**bad)
    with pytest.raises(ValueError, match="Unknown ConPetConfig keys"):
        ConPetConfig.from_dict({"r": 4, "rank": 8})
    config = ConPetConfig(r=8, target_modules=["q_proj"], top_k=2)
    assert ConPetConfig.from_json_string(config.to_json_string()) == config


def test_target_modules_resolved_per_architecture():
    assert ConPetModelForCausalLM(tiny_llama()).base_model.target_paths[:2] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"]
    assert all(p.endswith((".q", ".k")) for p in ConPetModelForSeq2SeqLM(tiny_t5()).base_model.target_paths)
    assert all(p.endswith((".query", ".key")) for p in ConPetModelForSequenceClassification(tiny_bert()).base_model.target_paths)
    with pytest.raises(ValueError, match="match no nn.Linear"):
        ConPetModelForCausalLM(tiny_llama(), ConPetConfig(target_modules=["nonexistent"]))


def test_save_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    model, _ = build("llama")
    model.save_pretrained(tmp_path / "system")
    before = sorted(p.name for p in tmp_path.iterdir())

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("hf_conpet.saved_layout.save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "system")
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp dirs, no half "fresh"
    assert (tmp_path / "system" / "tasks" / "task2" / "adapter_model.safetensors").is_file()


def test_load_rejects_unknown_format_and_other_base_models(tmp_path):
    model, reference = build("llama")
    model.save_pretrained(tmp_path / "system")
    manifest_path = tmp_path / "system" / "conpet_config.json"
    manifest = json.loads(manifest_path.read_text())

    other = tiny_llama()
    other.config.hidden_size = 32  # same shapes, different recorded id
    other.config._name_or_path = "someone/other-model"
    manifest["base_model"]["name_or_path"] = "someone/original-model"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleBaseModelError, match="base model id"):
        ConPetModelForCausalLM.from_pretrained(tmp_path / "system", base_model=other)

    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(IncompatibleBaseModelError, match="target layers differ"):
        ConPetModelForCausalLM.from_pretrained(tmp_path / "system", base_model=wider, strict_base_model_id=False)
    with pytest.raises(IncompatibleBaseModelError, match="model_type"):
        ConPetModelForCausalLM.from_pretrained(tmp_path / "system", base_model=tiny_t5(), strict_base_model_id=False)

    with pytest.raises(ValueError, match="seq2seq|causal_lm"):
        ConPetModelForSeq2SeqLM.from_pretrained(tmp_path / "system", base_model=tiny_t5())

    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format_version 99"):
        ConPetModelForCausalLM.from_pretrained(tmp_path / "system", base_model=copy.deepcopy(reference))
    with pytest.raises(FileNotFoundError, match="no conpet_config.json"):
        ConPetModelForCausalLM.from_pretrained(tmp_path, base_model=copy.deepcopy(reference))


def test_manifest_with_path_like_task_name_is_refused(tmp_path):
    model, reference = build("llama", n_tasks=1)
    model.save_pretrained(tmp_path / "system")
    manifest_path = tmp_path / "system" / "conpet_config.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tasks"][0]["name"] = "../../etc"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="Invalid task name"):
        ConPetModelForCausalLM.from_pretrained(tmp_path / "system", base_model=copy.deepcopy(reference))


def test_sequence_classification_union_logits_and_loss():
    model, _ = build("bert")  # label counts 2, 3, 2
    assert model.head.num_labels == 7 and model.label_offset("task1") == 2
    out = model(**inputs(batch=3), task_ids=torch.tensor([0, 1, 2]), labels=torch.tensor([1, 3, 6]))
    logits = out.logits
    assert logits.shape == (3, 7)
    assert (logits[0, 2:] == -100).all() and (logits[1, :2] == -100).all() and (logits[1, 5:] == -100).all()
    assert torch.isfinite(out.loss)


def test_a_batch_sent_to_one_task_takes_the_plain_lora_path_with_the_same_outputs():
    model, _ = build("llama", n_tasks=3)
    ids = torch.randint(3, VOCAB, (4, 6), generator=torch.Generator().manual_seed(5))
    single = RoutingPlan.from_task_ids(torch.full((4,), 1))
    assert single.single_task == 1 and RoutingPlan.from_task_ids(torch.tensor([1, 2, 1, 1])).single_task is None
    gathered = RoutingPlan(weights=single.weights, indices=single.indices)  # the per-example path
    with torch.no_grad():
        plain = model(input_ids=ids, routing_plan=single).logits
        per_example = model(input_ids=ids, routing_plan=gathered).logits
    assert torch.allclose(plain, per_example, atol=1e-5, rtol=1e-5)
    assert RoutingPlan.top_k(torch.tensor([[0.1, 0.9], [0.2, 0.8]]), 1).single_task == 1
    with pytest.raises(RoutingError, match="names task 7"):
        model(input_ids=ids, routing_plan=RoutingPlan(weights=single.weights, indices=single.indices, single_task=7))
