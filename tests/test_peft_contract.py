"""The PeftModel contract a PEFT or TRL user relies on: disable_adapter, merge_task / merge_and_unload, unload."""

import copy

import pytest
import torch
from peft import PeftModel

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, ConPetModelForSeq2SeqLM, ConPetModelForSequenceClassification

from tiny_models import VOCAB, randomize_live_task, tiny_bert, tiny_llama, tiny_t5

KINDS = {"llama": (tiny_llama, ConPetModelForCausalLM), "t5": (tiny_t5, ConPetModelForSeq2SeqLM),
         "bert": (tiny_bert, ConPetModelForSequenceClassification)}


def system(kind, n_tasks=3):
    make_base, cls = KINDS[kind]
    base = make_base()
    reference = copy.deepcopy(base)
    model = cls(base, ConPetConfig(selector="none", r=4))
    torch.manual_seed(0)
    for index in range(n_tasks):
        model.add_task(f"task{index}", labels=["a", "b", "c"][: 2 + index % 2])
        randomize_live_task(model, std=0.3)
    model.freeze_tasks()
    return model.eval(), reference.eval()


def batch(kind, n=3):
    ids = torch.randint(3, VOCAB, (n, 7), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if kind == "t5":
        inputs["decoder_input_ids"] = torch.randint(3, VOCAB, (n, 4), generator=torch.Generator().manual_seed(3))
    return inputs


@pytest.mark.parametrize("kind", list(KINDS))
def test_disable_adapter_gives_the_base_model_outputs(kind):
    model, reference = system(kind)
    inputs = batch(kind)
    assert isinstance(model, PeftModel)
    with torch.no_grad():
        routed = model(**inputs, task_ids=torch.tensor([0, 1, 2])).logits
        with model.disable_adapter():
            disabled = model(**inputs).logits  # no task id, no selector needed
        expected = reference(**inputs).logits
        after = model(**inputs, task_ids=torch.tensor([0, 1, 2])).logits
    assert torch.equal(disabled, expected)
    assert routed.shape != expected.shape or not torch.allclose(routed, expected)  # the tasks do change outputs
    assert torch.equal(after, routed)  # and the block ends cleanly


def test_disable_adapter_keeps_the_base_loss_and_generation():
    model, reference = system("llama")
    inputs = batch("llama")
    with torch.no_grad(), model.disable_adapter():
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(loss, reference(**inputs, labels=inputs["input_ids"]).loss)
        assert torch.equal(generated, reference.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0))


@pytest.mark.parametrize("kind", list(KINDS))
def test_merge_task_is_a_plain_model_equal_to_routing_to_that_task(kind):
    model, _ = system(kind)
    inputs = batch(kind)
    for index, name in enumerate(model.task_names):
        merged = model.merge_task(name)
        assert not any("TaskStacked" in type(m).__name__ for m in merged.modules())
        with torch.no_grad():
            routed = model(**inputs, task_ids=torch.full((3,), index)).logits
            plain = merged(**inputs).logits
        if kind == "bert":  # the routed logits span every task's labels; the task's own columns are its head
            offset = model.label_offset(index)
            routed = routed[:, offset : offset + len(model.tasks[index].labels)]
            assert merged.config.num_labels == len(model.tasks[index].labels)
        scale = max(1.0, float(routed.abs().max()))  # fp32 round-off of W + sBA against W x + sBAx: 1e-5 of the scale
        assert torch.allclose(plain, routed, atol=1e-5 * scale, rtol=0)
    with torch.no_grad():  # the system itself is unchanged
        assert torch.equal(model(**inputs, task_ids=torch.tensor([0, 1, 2])).logits,
                           system(kind)[0](**inputs, task_ids=torch.tensor([0, 1, 2])).logits)


def test_merge_and_unload_unload_and_the_status_calls():
    model, reference = system("llama")
    with pytest.raises(ValueError, match=r"3 task modules.*merge_task\(name\)"):
        model.merge_and_unload()
    with pytest.raises(NotImplementedError, match="task_names"):
        model.get_model_status()
    with pytest.raises(NotImplementedError, match="lora_layers"):
        model.get_layer_status()
    with pytest.raises(NotImplementedError, match="task_ids or use the selector"):
        model.set_adapter("task0")
    inputs = batch("llama")
    with torch.no_grad():
        assert torch.equal(model.unload()(**inputs).logits, reference(**inputs).logits)
    single, _ = system("llama", n_tasks=1)
    with torch.no_grad():
        assert torch.allclose(single.merge_and_unload()(**inputs).logits,
                              single(**inputs, task_ids=torch.zeros(3, dtype=torch.long)).logits, atol=1e-5)


def test_gradient_checkpointing_recomputes_with_the_routing_plan():
    """Backward recomputes checkpointed layers in autograd's thread, where the call's plan is not set:
    the recomputation must see the same plan, so the task module's gradients equal those without it."""
    from hf_conpet import ConPetConfig, ConPetModelForCausalLM

    from tiny_models import randomize_live_task, tiny_llama

    grads = {}
    for checkpointing in (False, True):
        model = ConPetModelForCausalLM(tiny_llama(seed=0), ConPetConfig(selector="none", r=4))
        for name in ("a", "b"):
            model.add_task(name)
            torch.manual_seed(len(model.tasks))
            randomize_live_task(model)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(0))
        model(input_ids=ids, labels=ids, task_ids=[1, 1]).loss.backward()
        grads[checkpointing] = {k: p.grad.clone() for k, p in model.trainable_parameters().items()}
        assert model.get_base_model().is_gradient_checkpointing == checkpointing
    assert grads[False].keys() == grads[True].keys() and grads[True]
    for key in grads[False]:
        assert torch.allclose(grads[False][key], grads[True][key], atol=1e-6), key
