"""Routing belongs to the call: concurrent callers never see each other's plans (a server's path)."""

import threading

import pytest
import torch

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, RoutingPlan
from hf_conpet.model import RoutingError
from hf_conpet.selectors import ConPetSelector

from tiny_models import VOCAB, randomize_live_task, tiny_llama

ROUNDS = 20


def system(selector=False, n_tasks=4):
    model = ConPetModelForCausalLM(tiny_llama(), ConPetConfig(selector="conpet" if selector else "none", r=4))
    if selector:  # the faithful source: its feature pass runs the backbone with routing switched off
        model.selector = ConPetSelector.for_model(model, feature_source="hidden", head_dim=8)
    torch.manual_seed(0)
    for index in range(n_tasks):
        model.add_task(f"task{index}")
        randomize_live_task(model, std=0.5)
    model.freeze_tasks()
    return model.eval()


def calls():
    """Four callers: different batch sizes and task ids (a batch of 1 beside batches of 2 and 3)."""
    generator = torch.Generator().manual_seed(1)
    shapes = [(1, [3]), (2, [0, 1]), (3, [2, 2, 0]), (2, [1, 3])]
    return [(torch.randint(3, VOCAB, (b, 7), generator=generator), torch.tensor(ids)) for b, ids in shapes]


def run_together(workers):
    """Start every worker at once (a barrier per round) and re-raise the first failure."""
    barrier, errors = threading.Barrier(len(workers)), []

    def wrap(work):
        def run():
            try:
                for _ in range(ROUNDS):
                    barrier.wait()
                    work()
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)
                barrier.abort()
        return run

    threads = [threading.Thread(target=wrap(work)) for work in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_concurrent_forwards_equal_the_same_calls_made_alone():
    model = system()
    alone = []
    with torch.no_grad():
        for input_ids, task_ids in calls():
            alone.append(model(input_ids=input_ids, task_ids=task_ids).logits)
    mismatches = []

    def caller(index, input_ids, task_ids):
        def work():
            with torch.no_grad():
                logits = model(input_ids=input_ids, task_ids=task_ids).logits
            if not torch.equal(logits, alone[index]):
                mismatches.append(index)
        return work

    run_together([caller(i, ids, tasks) for i, (ids, tasks) in enumerate(calls())])
    assert mismatches == []


def test_a_selector_routing_in_one_thread_never_unroutes_another_threads_generation():
    model = system(selector=True)
    prompt, task_ids = calls()[2]
    with torch.no_grad():
        expected = model.generate(input_ids=prompt, task_ids=task_ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        expected_route = model.route({"input_ids": prompt})
    results = {"generate": [], "route": []}

    def generate():
        with torch.no_grad():
            results["generate"].append(torch.equal(
                model.generate(input_ids=prompt, task_ids=task_ids, max_new_tokens=5, do_sample=False, pad_token_id=0), expected))

    def route():
        results["route"].append(torch.equal(model.route({"input_ids": prompt}), expected_route))

    run_together([generate, route, generate, route])
    assert len(results["generate"]) == 2 * ROUNDS and all(results["generate"])
    assert len(results["route"]) == 2 * ROUNDS and all(results["route"])


def test_the_plan_is_gone_after_the_call_and_bad_plans_raise():
    model = system()
    input_ids, _ = calls()[1]
    with torch.no_grad():
        model(input_ids=input_ids, task_ids=torch.tensor([0, 1]))
    assert model.routing.plan is None
    for plan, message in (
        (RoutingPlan(weights=torch.ones(2, 1), indices=torch.tensor([[0], [4]])), r"indices in \[0, 4\]"),
        (RoutingPlan(weights=torch.ones(2, 1), indices=torch.tensor([[-1], [0]])), r"indices in \[-1, 0\]"),
        (RoutingPlan(weights=torch.ones(2, 3)), "weighs 3 tasks but 4"),
        (RoutingPlan.from_task_ids(torch.tensor([0, 1, 2])), "batch of 3 examples, the call has 2"),
    ):
        with pytest.raises(RoutingError, match=message):
            model(input_ids=input_ids, routing_plan=plan)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_task_added_after_a_dtype_change_lives_beside_the_stacks(dtype):
    model = system(n_tasks=2).to(dtype)
    model.add_task("late")
    layer = next(iter(model.base_model.lora_layers().values()))
    assert layer.live_lora_A.dtype == layer.frozen_lora_A.dtype == dtype
    input_ids, _ = calls()[2]
    with torch.no_grad():
        logits = model(input_ids=input_ids, task_ids=torch.tensor([2, 0, 1])).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()
