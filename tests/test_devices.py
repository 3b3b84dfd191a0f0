"""Plans on every device a model is split over; the same mechanics on a GPU (skipped without one)."""

import copy

import pytest
import torch
from peft import PeftModel

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, RoutingPlan
from hf_conpet.layers import RoutingContext

from tiny_models import VOCAB, randomize_live_task, tiny_llama

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_the_plan_is_moved_once_per_device_per_call_and_dropped_after_it():
    routing = RoutingContext()
    plan = RoutingPlan.from_task_ids(torch.tensor([0, 1]))
    assert routing.plan_on(torch.device("cpu")) is None
    with routing.use(plan):
        assert routing.plan_on(torch.device("cpu")) is plan  # already there: no copy
        moved = routing.plan_on(torch.device("meta"))
        assert moved.weights.device.type == "meta" and moved.indices.device.type == "meta"
        assert routing.plan_on(torch.device("meta")) is moved  # every later layer there reuses it
        with routing.use(None):  # a nested call (a selector's feature pass) has its own
            assert routing.plan_on(torch.device("meta")) is None
        assert routing.plan_on(torch.device("meta")) is moved
    assert routing.plan is None and routing.plan_on(torch.device("meta")) is None


def system(device, dtype=torch.float32, n_tasks=3):
    base = tiny_llama()
    reference = copy.deepcopy(base)
    model = ConPetModelForCausalLM(base, ConPetConfig(selector="none", r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for index in range(n_tasks):
        model.add_task(f"task{index}")
        randomize_live_task(model)
    model.freeze_tasks()
    return model.to(device=device, dtype=dtype).eval(), reference


@needs_cuda
def test_bf16_on_cuda_routes_like_plain_peft(tmp_path):
    model, reference = system("cuda", torch.bfloat16)
    model.save_pretrained(tmp_path / "system")
    ids = torch.randint(3, VOCAB, (3, 8), device="cuda")
    for index in range(3):
        peft = PeftModel.from_pretrained(copy.deepcopy(reference).to("cuda", torch.bfloat16),
                                         tmp_path / "system" / "tasks" / f"task{index}").eval()
        with torch.no_grad():
            expected = peft(input_ids=ids).logits.float()
            routed = model(input_ids=ids, task_ids=torch.full((3,), index, device="cuda")).logits.float()
        assert torch.allclose(routed, expected, atol=3e-2 * float(expected.abs().max()), rtol=0)


@needs_cuda
def test_a_model_split_across_gpu_and_cpu_routes_like_one_device():
    from accelerate import dispatch_model

    model, _ = system("cpu")
    ids = torch.randint(3, VOCAB, (4, 8))
    task_ids = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        expected = model(input_ids=ids, task_ids=task_ids).logits
    split = copy.deepcopy(model)
    device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatch_model(split.get_base_model(), device_map=device_map)
    with torch.no_grad():
        routed = split(input_ids=ids.to("cuda"), task_ids=task_ids).logits
    assert torch.allclose(routed.cpu(), expected, atol=1e-4, rtol=1e-4)
