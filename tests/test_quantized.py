"""QLoRA's path: a base loaded in 4-bit or 8-bit (bitsandbytes; its CPU backend here) takes tasks, trains
with the Trainer, saves plain PEFT LoRA files and reloads."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from hf_conpet import ConPetConfig, ConPetModelForCausalLM

from tiny_models import VOCAB, CausalLMRows, randomize_live_task

bnb = pytest.importorskip("bitsandbytes")
from transformers import BitsAndBytesConfig  # noqa: E402

QUANTIZATION = {
    "4bit": lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
    "8bit": lambda: BitsAndBytesConfig(load_in_8bit=True),
}
pytestmark = pytest.mark.filterwarnings("ignore:MatMul8bitLt")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A small random Llama wide enough for bitsandbytes' 4-bit blocks (64 values) on its CPU kernels."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    folder = tmp_path_factory.mktemp("small_llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def quantized(base_dir, bits):
    return AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=QUANTIZATION[bits](), device_map="cpu").eval()


@pytest.mark.parametrize("bits", list(QUANTIZATION))
def test_a_quantized_base_takes_tasks_trains_saves_and_reloads(bits, base_dir, tmp_path):
    model = ConPetModelForCausalLM(quantized(base_dir, bits), ConPetConfig(selector="none", r=4, target_modules=["q_proj", "v_proj"]))
    layer = next(iter(model.base_model.lora_layers().values()))
    assert isinstance(layer.base_layer, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
    for task in range(2):
        model.add_task(f"task{task}")
        randomize_live_task(model)
        before = layer.live_lora_B.detach().clone()
        args = TrainingArguments(str(tmp_path / f"run{task}"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                                 report_to=[], use_cpu=True, remove_unused_columns=False, save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=CausalLMRows(8, task_id=task, seed=task)).train()
        assert not torch.equal(layer.live_lora_B.detach(), before)  # the adapter trained on the quantized base
        assert layer.live_lora_A.dtype == torch.float32  # adapters stay fp32 over int weights
    model.eval().save_pretrained(tmp_path / "system")
    adapter_config = json.loads((tmp_path / "system" / "tasks" / "task1" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]

    loaded = ConPetModelForCausalLM.from_pretrained(tmp_path / "system", base_model=quantized(base_dir, bits)).eval()
    ids = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(7))
    for index in range(2):
        with torch.no_grad():
            trained = model(input_ids=ids, task_ids=torch.full((2,), index)).logits
            routed = loaded(input_ids=ids, task_ids=torch.full((2,), index)).logits
            peft = PeftModel.from_pretrained(quantized(base_dir, bits), tmp_path / "system" / "tasks" / f"task{index}").eval()
            plain = peft(input_ids=ids).logits
        assert torch.equal(routed, trained)
        assert torch.allclose(routed, plain, atol=1e-3 * float(plain.abs().max()), rtol=0)
    with pytest.raises(ValueError, match="not a plain floating-point nn.Linear"):
        loaded.merge_task("task0")
