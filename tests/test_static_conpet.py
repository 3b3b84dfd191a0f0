"""Static ConPET: EWC and LwF on one shared LoRA through the model's own loss, the method presets,
the config/method agreement, and the kmeans exemplar memory reached through the callback."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, method_config
from hf_conpet.callback import ContinualCallback
from hf_conpet.data import TaskStream
from hf_conpet.features import FeatureSpec
from hf_conpet.memory import kmeans_exemplars
from hf_conpet.methods import METHODS, SHARED_MODULE_NAME, config_selector
from hf_conpet.model_card import system_description
from hf_conpet.regularizers import EWCRegularizer, LwFRegularizer
from hf_conpet.trainer import ContinualTrainer, attach_method

from test_continual import args
from tiny_models import randomize_live_task, tiny_byte_tokenizer, tiny_llama_for

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "long_sequence"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_byte_tokenizer()


@pytest.fixture(scope="module")
def stream(tokenizer):
    return TaskStream.from_dir(DATA, order=["sst2", "copa"], tokenizer=tokenizer, max_train=12, max_test=4,
                               validation_size=2)


def shared_model(tokenizer, stream, method, **fields):
    """A model as ContinualTrainer builds it for `method`: its regulariser attached, one live shared
    module with non-zero LoRA weights, and a training batch of the first task."""
    model = ConPetModelForCausalLM(tiny_llama_for(tokenizer), method_config(method, **fields), tokenizer=tokenizer)
    attach_method(model, method)
    model.add_task(SHARED_MODULE_NAME)
    randomize_live_task(model)
    callback = ContinualCallback(model, stream, method, tokenizer=tokenizer, batch_size=4)
    batch = next(callback.training_batches(stream[0].train))
    return model, callback, batch


def live_parameters(model):
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def loss_and_gradients(model, batch, with_regularizer=True):
    """The training loss of `batch` and its gradient on each live parameter (train mode)."""
    regularizer = model.regularizer
    if not with_regularizer:
        model.regularizer = None
    try:
        model.train()
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {name: p.grad.detach().clone() for name, p in live_parameters(model).items()}
    finally:
        model.regularizer = regularizer
        model.zero_grad()


def perturb(model, scale=0.05, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in live_parameters(model).values():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def test_ewc_pulls_the_shared_module_back_by_its_fisher(tokenizer, stream):
    weight = 1000.0  # the tiny model's Fisher is small: a large weight lifts the pull above fp32 noise
    model, callback, batch = shared_model(tokenizer, stream, "ewc", regularizer_weight=weight)
    ewc = model.regularizer
    assert isinstance(ewc, EWCRegularizer) and ewc.lambda_ == weight
    # before any task ended there is nothing to protect: the loss is the task loss alone
    assert torch.equal(loss_and_gradients(model, batch)[0], loss_and_gradients(model, batch, False)[0])

    ewc.end_task(model, callback.training_batches(stream[0].train))  # what finish_task does
    live = live_parameters(model)
    assert set(ewc.fisher) == set(live) and ewc.num_consolidated_tasks == 1
    assert sum(float(f.sum()) for f in ewc.fisher.values()) > 0
    # at the anchor the pull is zero
    loss, gradients = loss_and_gradients(model, batch)
    plain_loss, plain_gradients = loss_and_gradients(model, batch, False)
    assert torch.allclose(loss, plain_loss)
    for name in live:
        torch.testing.assert_close(gradients[name], plain_gradients[name])

    perturb(model)  # as if the next task had moved the module
    loss, gradients = loss_and_gradients(model, batch)
    plain_loss, plain_gradients = loss_and_gradients(model, batch, False)
    expected_penalty = sum(weight / 2 * (ewc.fisher[n] * (live[n].detach() - ewc.anchor[n]) ** 2).sum() for n in live)
    torch.testing.assert_close(loss - plain_loss, expected_penalty, rtol=1e-3, atol=1e-6)
    for name in live:  # d/dθ λ/2 Σ F (θ - θ*)^2 = λ F (θ - θ*)
        pull = weight * ewc.fisher[name] * (live[name].detach() - ewc.anchor[name])
        torch.testing.assert_close(gradients[name] - plain_gradients[name], pull, rtol=1e-3, atol=1e-6)
    assert any(float(g.abs().max()) > 0 for g in (gradients[n] - plain_gradients[n] for n in live))


def _distillation_by_hand(student_logits, teacher_logits, labels, temperature, weight):
    """λ T² mean over answer positions of KL(softmax(teacher/T) || softmax(student/T)), causal shift."""
    keep = labels[:, 1:].ne(-100)
    student = student_logits[:, :-1][keep] / temperature
    teacher = teacher_logits[:, :-1][keep] / temperature
    kl = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="none").sum(-1)
    return weight * temperature**2 * kl.mean()


def test_lwf_distils_the_model_before_the_task_on_the_new_inputs(tokenizer, stream):
    model, callback, batch = shared_model(tokenizer, stream, "lwf", regularizer_weight=2.0)
    lwf = model.regularizer
    assert isinstance(lwf, LwFRegularizer) and lwf.lambda_ == 2.0
    assert torch.equal(loss_and_gradients(model, batch)[0], loss_and_gradients(model, batch, False)[0])

    lwf.end_task(model, [])
    teacher = copy.deepcopy(model)  # the model as the task left it
    teacher.regularizer = None
    # the student is its teacher: no distillation loss and no pull
    loss, gradients = loss_and_gradients(model, batch)
    plain_loss, plain_gradients = loss_and_gradients(model, batch, False)
    torch.testing.assert_close(loss, plain_loss)
    for name in gradients:
        torch.testing.assert_close(gradients[name], plain_gradients[name], rtol=1e-4, atol=1e-6)

    perturb(model)
    loss, _ = loss_and_gradients(model, batch)
    plain_loss, _ = loss_and_gradients(model, batch, False)
    model.train()
    teacher.train()
    with torch.no_grad():
        student_logits = model(**batch).logits
        teacher_logits = teacher(**batch).logits
    expected = _distillation_by_hand(student_logits, teacher_logits, batch["labels"], lwf.temperature, 2.0)
    assert float(expected) > 1e-6
    torch.testing.assert_close(loss - plain_loss, expected, rtol=1e-3, atol=1e-6)
    # the teacher is a copy: training the student does not move it
    assert all(torch.equal(lwf.teacher[n], p.detach()) for n, p in live_parameters(teacher.base_model).items())


def test_method_presets_produce_the_configs_they_name():
    expected = {"ewc": ("none", "ewc", "task"), "lwf": ("none", "lwf", "task"),
                "ewc_replay": ("none", "ewc", "replay"), "lwf_replay": ("none", "lwf", "replay"),
                "replay": ("none", "none", "replay"), "seq_lora": ("none", "none", "task"),
                "multitask": ("none", "none", "all"), "olora": ("none", "olora", "task"),
                "conpet": ("conpet", "none", "task"), "conpet_analytic": ("analytic", "none", "task"),
                "sapt": ("sapt", "none", "task"), "oracle": ("none", "none", "task")}
    for name, (selector, regularizer, train_data) in expected.items():
        config = method_config(name)
        assert (config.selector, config.regularizer, config.train_data) == (selector, regularizer, train_data), name
    for name in METHODS:
        assert method_config(name).selector == config_selector(name)
    analytic = method_config("conpet_analytic", r=4)
    assert analytic.r == 4 and analytic.selector_options["feature_pooling"] == "last"
    kept = method_config("ewc_replay", memory="kmeans", memory_capacity=5, regularizer_weight=0.1)
    assert (kept.memory, kept.memory_capacity, kept.regularizer_weight) == ("kmeans", 5, 0.1)
    with pytest.raises(ValueError, match=r"method 'ewc' fixes regularizer='lwf'"):
        method_config("ewc", regularizer="lwf")
    with pytest.raises(ValueError, match="Unknown method"):
        method_config("emr")


def test_a_config_that_contradicts_its_method_is_refused_by_name(tokenizer, stream, tmp_path):
    model = ConPetModelForCausalLM(tiny_llama_for(tokenizer), ConPetConfig(), tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"selector='conpet' \(method 'sapt' trains 'sapt'\)"):
        ContinualTrainer(model, stream, args(tmp_path), method="sapt", batches_per_task=1, max_length=64)
    ewc = ConPetModelForCausalLM(tiny_llama_for(tokenizer), method_config("ewc"), tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"regularizer='ewc' \(method 'lwf_replay' trains 'lwf'\).*train_data"):
        ContinualTrainer(ewc, stream, args(tmp_path), method="lwf_replay", batches_per_task=1, max_length=64)
    with pytest.raises(ValueError, match=r"attach_method\(model, 'ewc'\)"):
        ContinualCallback(ewc, stream, "ewc", tokenizer=tokenizer)
    for bad, problem in (({"memory": "kmeans"}, "needs memory_capacity"),
                         ({"memory": "all", "memory_capacity": 3}, "contradicts"),
                         ({"memory": "herding", "memory_capacity": 3}, "memory must be one of"),
                         ({"regularizer_weight": -1.0}, "regularizer_weight must be >= 0"),
                         ({"train_data": "both"}, "train_data must be one of")):
        with pytest.raises(ValueError, match=problem):
            ConPetConfig(**bad)


def test_kmeans_memory_keeps_the_rows_nearest_the_centroids_of_frozen_features(tokenizer, stream, tmp_path):
    model = ConPetModelForCausalLM(tiny_llama_for(tokenizer), method_config("ewc_replay", memory="kmeans", memory_capacity=3),
                                   tokenizer=tokenizer)
    trainer = ContinualTrainer(model, stream, args(tmp_path), method="ewc_replay", batches_per_task=2, max_length=64,
                               max_eval_examples=2)
    trainer.fit()
    memory = trainer.callback.memory
    assert memory.strategy == "kmeans" and memory.capacity == 3
    assert [memory.num_examples(t) for t in memory.tasks] == [3, 3]
    for task in stream:
        features = trainer.callback.memory_embeddings(task.train)
        assert features.shape == (len(task.train), model.feature_size(FeatureSpec()))
        rng = np.random.default_rng([memory.seed, task.index, 0])
        assert memory.source_rows(task.index) == kmeans_exemplars(features.numpy(), 3, rng).tolist()
    assert model.regularizer.num_consolidated_tasks == 2  # EWC consolidated after each task


def test_the_card_describes_the_shared_system_that_was_trained():
    for method, words in (("ewc_replay", ("Static ConPET", "EWC")), ("lwf_replay", ("Static ConPET", "LwF")),
                          ("replay", ("Static ConPET", "EMR")), ("ewc", ("EWC", "no replay")),
                          ("seq_lora", ("Sequential LoRA",)), ("multitask", ("Multitask",))):
        config = method_config(method).to_dict()
        module = "multitask" if method == "multitask" else SHARED_MODULE_NAME
        summary, routing, description = system_description(config, [module])
        assert "no routing" in summary and "selector" not in routing
        for word in words:
            assert word in description, (method, description)
