"""Growing to many tasks: appends never re-copy frozen tasks, loading rebuilds the same system, and a
system saved by an earlier release still loads."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, ConPetModelForSequenceClassification
from hf_conpet.growth import append_rows

from tiny_models import VOCAB, randomize_live_task, tiny_bert, tiny_llama

FIXTURE = Path(__file__).parent / "fixtures" / "system_0_1_0"


def test_append_rows_grows_in_place_and_never_writes_over_rows_it_gave_out():
    module = torch.nn.Module()
    module.register_buffer("stack", torch.zeros(0, 3))
    views, reallocations, storage = [], 0, None
    for index in range(100):
        append_rows(module, "stack", torch.full((1, 3), float(index)))
        current = module._growth_storage["stack"]
        reallocations += current is not storage
        storage = current
        views.append(module.stack[index])
    assert module.stack.shape == (100, 3) and "stack" in dict(module.named_buffers())
    assert torch.equal(module.stack[:, 0], torch.arange(100.0))
    assert all(float(view[0]) == index for index, view in enumerate(views))  # rows handed out stay as they were
    assert reallocations <= 6  # capacity doubles: 8, 16, 32, ... never one copy per append
    module.stack = module.stack[:10].clone()  # replaced (as thaw_last does): the next append starts afresh
    append_rows(module, "stack", torch.full((1, 3), -1.0))
    assert torch.equal(module.stack[:, 0], torch.cat([torch.arange(10.0), torch.tensor([-1.0])]))
    assert all(float(view[0]) == index for index, view in enumerate(views))
    with pytest.raises(ValueError, match="cannot append rows of shape"):
        append_rows(module, "stack", torch.zeros(1, 4))


def many_tasks(n=50):
    model = ConPetModelForCausalLM(tiny_llama(), ConPetConfig(selector="none", r=2, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    weights = []
    for index in range(n):
        model.add_task(f"task{index}")
        randomize_live_task(model)
        model.freeze_tasks()
        weights.append({path: tuple(t.clone() for t in layer.task_weights(index))
                        for path, layer in model.base_model.lora_layers().items()})
    return model.eval(), weights


def test_fifty_tasks_stay_bit_identical_and_reload_to_the_same_system(tmp_path):
    model, weights = many_tasks()
    for index, recorded in enumerate(weights):  # every later append left every frozen task as it was
        for path, layer in model.base_model.lora_layers().items():
            assert all(torch.equal(a, b) for a, b in zip(layer.task_weights(index), recorded[path]))
    model.save_pretrained(tmp_path / "saved")
    loaded = ConPetModelForCausalLM.from_pretrained(tmp_path / "saved", base_model=tiny_llama()).eval()
    ids = torch.randint(3, VOCAB, (8, 6), generator=torch.Generator().manual_seed(1))
    task_ids = torch.tensor([0, 49, 7, 23, 23, 31, 1, 48])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, task_ids=task_ids).logits, model(input_ids=ids, task_ids=task_ids).logits)
    loaded.save_pretrained(tmp_path / "again")
    for index in (0, 17, 49):  # the same plain PEFT adapter, tensor for tensor
        first = load_file(tmp_path / "saved" / "tasks" / f"task{index}" / "adapter_model.safetensors")
        second = load_file(tmp_path / "again" / "tasks" / f"task{index}" / "adapter_model.safetensors")
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_classification_heads_grow_without_moving_old_heads():
    model = ConPetModelForSequenceClassification(tiny_bert(), ConPetConfig(selector="none", r=2))
    heads = []
    for index in range(20):
        model.add_task(f"task{index}", labels=["a", "b", "c"][: 2 + index % 2])
        randomize_live_task(model)
        model.freeze_tasks()
        heads.append(tuple(t.clone() for t in model.head.task_state(index)))
    for index, (weight, bias) in enumerate(heads):
        now_weight, now_bias = model.head.task_state(index)
        assert torch.equal(now_weight, weight) and torch.equal(now_bias, bias)
    assert model.head.label_task.tolist() == [t for t in range(20) for _ in range(2 + t % 2)]


def test_a_system_saved_by_hf_conpet_0_1_0_loads_and_answers_as_it_did():
    expected = load_file(FIXTURE / "expected.safetensors")
    loaded = ConPetModelForCausalLM.from_pretrained(FIXTURE / "system", base_model=tiny_llama()).eval()
    assert loaded.task_names == ["task0", "task1", "task2"] and loaded.selector.kind == "conpet"
    with torch.no_grad():  # the same answers up to float round-off (a batch routed to one task now takes PEFT's matmuls)
        routed = loaded(input_ids=expected["input_ids"]).logits
        by_task = loaded(input_ids=expected["input_ids"], task_ids=torch.tensor([0, 1, 2, 1])).logits
    assert torch.allclose(routed, expected["routed_logits"], atol=1e-6, rtol=1e-5)
    assert torch.allclose(by_task, expected["task_logits"], atol=1e-6, rtol=1e-5)
