"""bf16 / fp16: adapters in fp32 under a half-precision base by default (PEFT's choice), tasks added after
`model.to(dtype)`, training with the Trainer, save and reload, equal to plain PEFT holding the same weights."""

import copy

import pytest
import torch
from peft import PeftModel
from transformers import Trainer, TrainingArguments

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, ConPetModelForSequenceClassification

from tiny_models import VOCAB, CausalLMRows, randomize_live_task, tiny_bert, tiny_llama

HALF = [torch.bfloat16, torch.float16]
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 5e-3}  # of the logits' scale


def config(**overrides):
    return ConPetConfig(selector="none", r=4, target_modules=["q_proj", "v_proj"], **overrides)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("autocast", [True, False])
def test_adapters_of_a_half_precision_base_follow_autocast_adapter_dtype(dtype, autocast):
    model = ConPetModelForCausalLM(tiny_llama().to(dtype), config(autocast_adapter_dtype=autocast))
    model.add_task("a")
    randomize_live_task(model)
    expected = torch.float32 if autocast else dtype
    for layer in model.base_model.lora_layers().values():
        assert layer.frozen_lora_A.dtype == layer.live_lora_A.dtype == expected
    ids = torch.randint(3, VOCAB, (2, 6))
    with torch.no_grad():
        logits = model(input_ids=ids, task_ids=torch.tensor([0, 0])).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    heads = ConPetModelForSequenceClassification(tiny_bert().to(dtype), ConPetConfig(selector="none", r=2, autocast_adapter_dtype=autocast))
    heads.add_task("a", labels=["x", "y"])
    assert heads.head.live_head_weight.dtype == heads.head.frozen_head_weight.dtype == expected


@pytest.mark.parametrize("dtype", HALF)
def test_to_dtype_add_task_train_save_load_equals_plain_peft(dtype, tmp_path):
    base = tiny_llama()
    model = ConPetModelForCausalLM(base, config())
    model.add_task("first")
    randomize_live_task(model)
    model.to(dtype)  # stacks, live task and (none here) selector together
    model.add_task("second")
    randomize_live_task(model)
    layer = next(iter(model.base_model.lora_layers().values()))
    assert layer.frozen_lora_A.dtype == layer.live_lora_A.dtype == dtype
    before = layer.live_lora_B.detach().clone()
    args = TrainingArguments(
        str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2, report_to=[],
        use_cpu=True, bf16=dtype == torch.bfloat16, remove_unused_columns=False, save_strategy="no",
        logging_strategy="no", disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=CausalLMRows(16, task_id=1)).train()
    assert not torch.equal(layer.live_lora_B.detach(), before)  # it trained
    model.eval().save_pretrained(tmp_path / "system")
    saved = model.base_model.lora_layers()
    base_half = copy.deepcopy(tiny_llama()).to(dtype).eval()
    loaded = ConPetModelForCausalLM.from_pretrained(tmp_path / "system", base_model=copy.deepcopy(base_half)).eval()
    for path, layer in loaded.base_model.lora_layers().items():  # fp32 stacks (autocast), the saved values exactly
        for index in range(2):
            for mine, theirs in zip(layer.task_weights(index), saved[path].task_weights(index)):
                assert mine.dtype == torch.float32 and torch.equal(mine, theirs.float())
    ids = torch.randint(3, VOCAB, (3, 8), generator=torch.Generator().manual_seed(9))
    for index, name in enumerate(["first", "second"]):
        peft = PeftModel.from_pretrained(copy.deepcopy(base_half), tmp_path / "system" / "tasks" / name).eval()
        with torch.no_grad():
            expected = peft(input_ids=ids).logits.float()
            routed = loaded(input_ids=ids, task_ids=torch.full((3,), index)).logits.float()
            trained = model(input_ids=ids, task_ids=torch.full((3,), index)).logits.float()
        scale = float(expected.abs().max())
        assert torch.allclose(routed, expected, atol=TOLERANCE[dtype] * scale, rtol=0)
        assert torch.allclose(trained, expected, atol=TOLERANCE[dtype] * scale, rtol=0)
