"""The analytic (closed-form ridge) router: equal to the joint solution, order-free, stores no example."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, ConPetModelForSeq2SeqLM, ConPetModelForSequenceClassification
from hf_conpet.selectors import SELECTOR_CLASSES, AnalyticSelector, TaskEndContext
from hf_conpet.selectors.analytic import DEFAULT_RIDGE, RIDGE_GRID

from tiny_models import randomize_live_task, tiny_bert, tiny_llama, tiny_t5

D = 6


def clustered(task, n, seed):
    """Features of one synthetic task: a cluster around its own centre, float32 like real features."""
    generator = torch.Generator().manual_seed(1000 * task + seed)
    centre = torch.randn(D, generator=torch.Generator().manual_seed(task)) * 2
    return (centre + torch.randn(n, D, generator=generator)).float()


TRAIN = {t: clustered(t, 20 + 7 * t, seed=1) for t in range(4)}
VALIDATION = {t: clustered(t, 5 + t, seed=2) for t in range(4)}


def learned(order, **options):
    """A selector that learned the tasks of `order`, one after another (task k = order[k])."""
    selector = AnalyticSelector(hidden_size=D, **options)
    for index, task in enumerate(order):
        selector.add_task()
        selector.add_statistics(index, TRAIN[task], VALIDATION[task])
        selector.solve()
    return selector


def joint_ridge(order, selector):
    """The ridge router computed once on every task's features together (the reference): weighted
    least squares, each prompt weighing 1 / (its task's prompt count) when tasks are balanced."""
    def stacked(split):
        phi = torch.cat([selector.feature_map(split[t]) for t in order])
        targets = torch.cat([torch.nn.functional.one_hot(torch.full((len(split[t]),), k), len(order))
                             for k, t in enumerate(order)]).double()
        weight = torch.cat([torch.full((len(split[t]),), 1.0 / len(split[t]) if selector.balance_tasks else 1.0,
                                       dtype=torch.float64) for t in order])
        return phi, targets, weight[:, None]

    phi, targets, weight = stacked(TRAIN)
    val_phi, val_targets, val_weight = stacked(VALIDATION)
    gram, cross = phi.T @ (weight * phi), phi.T @ (weight * targets)
    scale = torch.trace(gram) / gram.shape[0]
    identity = torch.eye(gram.shape[0], dtype=torch.float64)
    solutions = {f: torch.linalg.solve(gram + f * scale * identity, cross) for f in RIDGE_GRID}
    errors = {f: float((val_weight * (val_phi @ W - val_targets) ** 2).sum()) for f, W in solutions.items()}
    best = min(errors, key=errors.get)
    return solutions[best], float(best * scale), (gram, cross)


def assert_is_the_joint_ridge(selector, order):
    expected, ridge, (gram, cross) = joint_ridge(order, selector)
    assert float(selector.ridge) == pytest.approx(ridge, rel=1e-12)
    # fp64 round-off: W solves the joint normal equations (A + lambda I) W = C to machine precision
    # (a backward-stable check), and matches an independent solve as far as A's conditioning allows
    identity = torch.eye(gram.shape[0], dtype=torch.float64)
    residual = (gram + float(selector.ridge) * identity) @ selector.weights.T - cross
    assert residual.norm() <= 1e-12 * cross.norm() * max(1.0, float(gram.norm()) / float(cross.norm()))
    assert torch.allclose(selector.weights.T, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("expansion_dim,balance_tasks", [(0, True), (16, True), (0, False)])
def test_router_equals_the_joint_ridge_solution(expansion_dim, balance_tasks):
    order = [0, 1, 2, 3]
    options = {"expansion_dim": expansion_dim, "balance_tasks": balance_tasks}
    assert_is_the_joint_ridge(learned(order, **options), order)
    # after every task, too: the router of tasks 1..k is the joint solution on those k tasks
    for k in range(1, 4):
        assert_is_the_joint_ridge(learned(order[:k], **options), order[:k])


@pytest.mark.parametrize("balance_tasks", [True, False])
def test_router_is_the_same_for_any_task_order(balance_tasks):
    forward, backward = learned([0, 1, 2, 3], balance_tasks=balance_tasks), learned([3, 2, 1, 0], balance_tasks=balance_tasks)
    assert float(forward.ridge) == pytest.approx(float(backward.ridge), rel=1e-12)
    # backward's row k is task 3 - k
    assert torch.allclose(forward.weights, backward.weights.flip(0), rtol=1e-9, atol=1e-12)
    features = torch.cat([VALIDATION[t] for t in range(4)])
    assert torch.equal(forward.scores(features).argmax(-1), 3 - backward.scores(features).argmax(-1))
    # the clusters barely overlap: the router finds nearly every validation example's task
    truth = torch.cat([torch.full((len(VALIDATION[t]),), t) for t in range(4)])
    assert (forward.scores(features).argmax(-1) == truth).float().mean() >= 0.9


def test_no_example_is_stored_and_the_state_does_not_grow_with_examples():
    few = AnalyticSelector(hidden_size=D, expansion_dim=4)
    many = AnalyticSelector(hidden_size=D, expansion_dim=4)
    for selector, n in ((few, 3), (many, 300)):
        for task in range(2):
            selector.add_task()
            selector.add_statistics(task, clustered(task, n, seed=5), clustered(task, n, seed=6))
            selector.solve()
    shapes = {name: tuple(t.shape) for name, t in few.state_dict().items()}
    assert shapes == {name: tuple(t.shape) for name, t in many.state_dict().items()}
    size = D + 4 + 1
    assert shapes == {"expansion": (4, D), "autocorrelation": (size, size), "cross_correlation": (2, size),
                      "validation_autocorrelation": (size, size), "validation_cross_correlation": (2, size),
                      "weights": (2, size), "finished": (2,), "ridge": ()}


def test_each_task_is_learned_once_and_unfinished_tasks_are_never_chosen():
    selector = learned([0, 1])
    with pytest.raises(ValueError, match="already added"):
        selector.add_statistics(1, TRAIN[1])
    with pytest.raises(ValueError, match="out of range"):
        selector.add_statistics(2, TRAIN[2])
    selector.add_task()  # the new task has no statistics yet
    probabilities = selector.task_probabilities(TRAIN[2])
    assert probabilities.shape == (len(TRAIN[2]), 3) and torch.all(probabilities[:, 2] == 0)
    assert torch.allclose(probabilities.sum(-1), torch.ones(len(TRAIN[2])))
    with pytest.raises(ValueError, match="no training prompts"):
        selector.add_statistics(2, torch.zeros(0, D))
    with pytest.raises(ValueError, match=r"features \[n, 6\]"):
        selector.scores(torch.zeros(3, D + 1))


def test_without_validation_the_default_ridge_is_used():
    selector = AnalyticSelector(hidden_size=D)
    selector.add_task()
    selector.add_statistics(0, TRAIN[0])
    figures = selector.solve()
    scale = float(torch.trace(selector.autocorrelation)) / selector.statistics_size
    assert figures["ridge_factor"] == DEFAULT_RIDGE and float(selector.ridge) == pytest.approx(DEFAULT_RIDGE * scale)


def test_bad_settings_and_configs_are_refused():
    assert SELECTOR_CLASSES["analytic"] is AnalyticSelector
    for bad, message in (({"expansion_dim": -1}, "expansion_dim"), ({"temperature": 0}, "temperature"),
                         ({"max_examples_per_task": 0}, "max_examples_per_task"), ({"feature_source": "logits"}, "feature_source")):
        with pytest.raises(ValueError, match=message):
            AnalyticSelector(hidden_size=D, **bad)
    config = learned([0, 1]).get_config()
    with pytest.raises(ValueError, match="Unknown AnalyticSelector config keys"):
        AnalyticSelector.from_config({**config, "head_dim": 4})
    with pytest.raises(ValueError, match="lacks 'hidden_size'"):
        AnalyticSelector.from_config({k: v for k, v in config.items() if k != "hidden_size"})


# ----- through a model: every task head, both feature sources, save -> load -> learn on ---------
def model_of(kind, feature_source="embeddings", pooling="mean"):
    base = {"llama": tiny_llama, "t5": tiny_t5, "bert": tiny_bert}[kind]()
    cls = {"llama": ConPetModelForCausalLM, "t5": ConPetModelForSeq2SeqLM, "bert": ConPetModelForSequenceClassification}[kind]
    reference = copy.deepcopy(base)
    model = cls(base, ConPetConfig(selector="analytic", r=2))
    model.selector = AnalyticSelector.for_model(model, feature_source=feature_source, feature_pooling=pooling, expansion_dim=8)
    return model, reference


def task_prompts(task, n, seed):
    """Prompts of one synthetic task: its own token range, so tasks are told apart by their words."""
    generator = torch.Generator().manual_seed(100 * task + seed)
    low = 3 + 30 * task
    ids = torch.randint(low, low + 30, (n, 6), generator=generator)
    lengths = torch.randint(3, 7, (n,), generator=generator)
    mask = (torch.arange(6)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def end_task(model, index):
    randomize_live_task(model)
    model.freeze_tasks()
    rows = {"train": task_prompts(index, 64, seed=1), "validation": task_prompts(index, 16, seed=2)}
    context = TaskEndContext(
        task_index=index, train=None, validation=rows["validation"], memory=None,
        features=lambda batch: model.prompt_features(batch["input_ids"], batch["attention_mask"]),
        batch_size=8, steps=0, replay_ratio=1.0, seed=index,
    )
    context.train = _Rows(rows["train"])
    return model.selector.end_task(context)


class _Rows(dict):
    """Prompt tensors with the two `datasets.Dataset` calls a selector makes on training rows."""

    def __len__(self):
        return self["input_ids"].shape[0]

    def shuffle(self, seed):
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return _Rows({k: v[order] for k, v in self.items()})

    def select(self, indices):
        return _Rows({k: v[list(indices)] for k, v in self.items()})


@pytest.mark.parametrize("kind,source", [("llama", "embeddings"), ("llama", "hidden"), ("t5", "hidden"), ("bert", "embeddings"),
                                         ("bert", "hidden")])
def test_routes_every_task_head_from_either_feature_source(kind, source):
    model, _ = model_of(kind, source)
    for index in range(3):
        model.add_task(f"task{index}", labels=["a", "b"])
        figures = end_task(model, index)
        assert figures["selector_examples"] == 64 and figures["ridge"] > 0
    test = [task_prompts(t, 32, seed=3) for t in range(3)]
    for task, batch in enumerate(test):
        probabilities = model.route(batch)
        assert probabilities.shape == (32, 3)
        assert (probabilities.argmax(-1) == task).float().mean() >= 0.6  # told apart by their tokens (chance: 1/3)
    batch = test[1]
    extra = {"decoder_input_ids": torch.zeros(32, 1, dtype=torch.long)} if kind == "t5" else {}
    with torch.no_grad():  # no task ids: the forward routes top-1 as the router says
        routed = model(**batch, **extra).logits
        chosen = model(**batch, **extra, task_ids=model.route(batch).argmax(-1)).logits
    assert torch.equal(routed, chosen)


def test_save_load_then_add_task_gives_the_router_of_no_round_trip(tmp_path):
    model, reference = model_of("llama")
    for index in range(2):
        model.add_task(f"task{index}")
        end_task(model, index)
    model.save_pretrained(tmp_path / "system")
    config = json.loads((tmp_path / "system" / "selector" / "config.json").read_text())
    assert config == {"kind": "analytic", "hidden_size": 32, "feature_source": "embeddings", "feature_layer": -1,
                      "feature_pooling": "mean", "expansion_dim": 8, "expansion_seed": 0, "temperature": 0.1, "max_examples_per_task": None, "balance_tasks": True,
                      "num_tasks": 2}
    state = load_file(tmp_path / "system" / "selector" / "model.safetensors")
    assert state["autocorrelation"].dtype == torch.float64 and state["weights"].shape == (2, 41)
    loaded = ConPetModelForCausalLM.from_pretrained(tmp_path / "system", base_model=copy.deepcopy(reference))
    for key, value in model.selector.state_dict().items():
        assert torch.equal(loaded.selector.state_dict()[key], value), key
    for system in (model, loaded):  # the stream goes on after the reload
        torch.manual_seed(7)
        system.add_task("task2")
        end_task(system, 2)
    for key, value in model.selector.state_dict().items():
        assert torch.equal(loaded.selector.state_dict()[key], value), key
    batch = task_prompts(2, 4, seed=9)
    assert torch.equal(loaded.route(batch), model.route(batch))


def test_max_examples_per_task_takes_a_seeded_subset():
    model, _ = model_of("llama")
    model.selector.max_examples_per_task = 10
    model.add_task("task0")
    assert end_task(model, 0)["selector_examples"] == 10
    assert float(model.selector.autocorrelation[-1, -1]) == pytest.approx(1.0)  # balanced: each task weighs 1
    unbalanced, _ = model_of("llama")
    unbalanced.selector.max_examples_per_task, unbalanced.selector.balance_tasks = 10, False
    unbalanced.add_task("task0")
    end_task(unbalanced, 0)
    assert int(unbalanced.selector.autocorrelation[-1, -1]) == 10  # the constant feature counts the prompts


def test_the_statistics_stay_float64_when_the_model_changes_dtype():
    model, _ = model_of("llama")
    model.add_task("task0")
    end_task(model, 0)
    before = {k: v.clone() for k, v in model.selector.state_dict().items()}
    model.to(torch.bfloat16)
    for key, value in model.selector.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
    assert model.route(task_prompts(0, 2, seed=4)).dtype == torch.float32


def test_last_token_pooling_reads_the_last_attended_position_whatever_the_padding_side():
    from hf_conpet.features import pool_prompt

    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert torch.equal(pool_prompt(hidden, right, "last"), torch.stack([hidden[0, 1], hidden[1, 3]]))
    assert torch.equal(pool_prompt(hidden, left, "last"), torch.stack([hidden[0, 3], hidden[1, 3]]))
    assert torch.equal(pool_prompt(hidden, torch.zeros(2, 4, dtype=torch.long), "last"), torch.zeros(2, 3))


def test_conpet_analytic_routes_on_the_last_prompt_token_and_old_configs_keep_mean_pooling(tmp_path):
    from hf_conpet.trainer import attach_method

    model = ConPetModelForCausalLM(tiny_llama(), ConPetConfig(selector="analytic", r=2))
    attach_method(model, "conpet_analytic")
    spec = model.selector.feature_spec
    assert (spec.source, spec.pooling, model.selector.max_examples_per_task) == ("hidden", "last", 256)
    config = model.selector.get_config()
    del config["feature_pooling"]  # a selector saved before the option existed
    assert AnalyticSelector.from_config(config).feature_spec.pooling == "mean"
