"""O-LoRA, EWC and LwF on hand-made tensors, against a stand-in for TaskStackedLoraLinear."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hf_conpet.regularizers import EWCRegularizer, LwFRegularizer, OLoRARegularizer, task_lora_layers


class StackedLoraStandIn(nn.Module):
    """Same attributes as hf_conpet.layers.TaskStackedLoraLinear: frozen buffers, live params."""

    def __init__(self, in_features=6, out_features=5, r=2, frozen_tasks=0, live=True):
        super().__init__()
        self.base = nn.Linear(in_features, out_features)
        self.base.requires_grad_(False)
        self.register_buffer("frozen_lora_A", torch.randn(frozen_tasks, r, in_features))
        self.register_buffer("frozen_lora_B", torch.randn(frozen_tasks, out_features, r))
        self.live_lora_A = nn.Parameter(torch.randn(r, in_features)) if live else None
        self.live_lora_B = nn.Parameter(0.5 * torch.randn(out_features, r)) if live else None

    def forward(self, x):
        out = self.base(x)
        for a, b in zip(self.frozen_lora_A, self.frozen_lora_B):
            out = out + x @ a.T @ b.T
        if self.live_lora_A is not None:
            out = out + x @ self.live_lora_A.T @ self.live_lora_B.T
        return out


class TinyModel(nn.Module):
    def __init__(self, frozen_tasks=1, live=True):
        super().__init__()
        self.first = StackedLoraStandIn(frozen_tasks=frozen_tasks, live=live)
        self.second = StackedLoraStandIn(in_features=5, out_features=3, frozen_tasks=frozen_tasks, live=live)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


# ----------------------------------------------------------------------------------------------
# O-LoRA
# ----------------------------------------------------------------------------------------------


def test_olora_is_zero_for_orthogonal_subspaces():
    model = TinyModel(frozen_tasks=2)
    basis = torch.eye(6)
    with torch.no_grad():
        model.first.frozen_lora_A.copy_(torch.stack([basis[0:2], basis[2:4]]))
        model.first.live_lora_A.copy_(basis[4:6] * 3.0)
        model.second.frozen_lora_A.copy_(torch.stack([torch.eye(5)[0:2], torch.eye(5)[2:4]]))
        model.second.live_lora_A.copy_(torch.eye(5)[[4, 4]])
    assert [name for name, _ in task_lora_layers(model)] == ["first", "second"]
    assert OLoRARegularizer(0.5).penalty(model).item() == 0.0


def test_olora_matches_the_formula_and_only_trains_the_live_a():
    model = TinyModel(frozen_tasks=3)
    regularizer = OLoRARegularizer(lambda1=0.5)
    expected = sum(
        (layer.frozen_lora_A[t] @ layer.live_lora_A.T).abs().sum()
        for layer in (model.first, model.second)
        for t in range(3)
    )
    penalty = regularizer.penalty(model)
    assert torch.allclose(penalty, 0.5 * expected)
    penalty.backward()
    assert model.first.live_lora_A.grad is not None and model.first.live_lora_A.grad.abs().sum() > 0
    assert model.first.live_lora_B.grad is None  # O-LoRA constrains A only
    assert model.first.frozen_lora_A.grad is None and model.first.base.weight.grad is None


def test_olora_without_old_tasks_or_live_module_is_zero():
    assert OLoRARegularizer().penalty(TinyModel(frozen_tasks=0)).item() == 0.0
    assert OLoRARegularizer().penalty(TinyModel(frozen_tasks=2, live=False)).item() == 0.0
    assert OLoRARegularizer().penalty(nn.Linear(2, 2)).item() == 0.0  # no LoRA layers at all


def test_olora_optional_l2_and_bad_weights():
    model = TinyModel(frozen_tasks=0)
    with torch.no_grad():
        model.first.live_lora_B.fill_(1.0)
    l2 = sum(layer.live_lora_A.norm() + layer.live_lora_B.norm() for layer in (model.first, model.second))
    assert torch.allclose(OLoRARegularizer(lambda1=0.5, lambda2=0.1).penalty(model), 0.1 * l2)
    with pytest.raises(ValueError, match="must be >= 0"):
        OLoRARegularizer(lambda1=-1)


# ----------------------------------------------------------------------------------------------
# EWC
# ----------------------------------------------------------------------------------------------


def regression_batches(seed=0, count=4):
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator)) for _ in range(count)
    ]


def mse_loss(model, batch):
    inputs, targets = batch
    return F.mse_loss(model(inputs), targets)


def live_parameter_names(model):
    return sorted(name for name, p in model.named_parameters() if p.requires_grad)


def test_ewc_fisher_is_the_mean_squared_gradient_over_batches():
    torch.manual_seed(0)
    model = TinyModel()
    batches = regression_batches()
    fisher = EWCRegularizer.estimate_fisher(model, batches, mse_loss)
    assert sorted(fisher) == live_parameter_names(model)  # only the live LoRA
    parameter = model.first.live_lora_A
    squares = [torch.autograd.grad(mse_loss(model, batch), parameter)[0] ** 2 for batch in batches]
    assert torch.allclose(fisher["first.live_lora_A"], torch.stack(squares).mean(0))
    assert parameter.grad is None  # estimation leaves .grad alone
    capped = EWCRegularizer.estimate_fisher(model, batches, mse_loss, max_batches=1)
    assert torch.allclose(capped["first.live_lora_A"], squares[0])


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it():
    torch.manual_seed(1)
    model = TinyModel()
    model.train()
    regularizer = EWCRegularizer(lambda_=4.0)
    assert regularizer.penalty(model).item() == 0.0  # nothing consolidated yet
    regularizer.consolidate(model, regression_batches(), mse_loss)
    assert model.training  # mode restored
    penalty = regularizer.penalty(model)
    assert penalty.item() == 0.0
    with torch.no_grad():
        model.first.live_lora_A.add_(0.5)
    penalty = regularizer.penalty(model)
    fisher = regularizer.fisher["first.live_lora_A"]
    assert torch.allclose(penalty, 4.0 / 2 * (fisher * 0.25).sum())
    penalty.backward()
    assert model.first.live_lora_A.grad.abs().sum() > 0
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            assert parameter.grad is None, name
    assert model.first.frozen_lora_A.grad is None


def test_ewc_fisher_accumulates_across_tasks_and_anchor_moves():
    torch.manual_seed(2)
    model = TinyModel()
    regularizer = EWCRegularizer()
    regularizer.consolidate(model, regression_batches(seed=0), mse_loss)
    first = {name: value.clone() for name, value in regularizer.fisher.items()}
    with torch.no_grad():
        model.second.live_lora_B.add_(0.3)
    second = EWCRegularizer.estimate_fisher(model, regression_batches(seed=1), mse_loss)
    regularizer.consolidate(model, regression_batches(seed=1), mse_loss)
    for name in first:
        assert torch.allclose(regularizer.fisher[name], first[name] + second[name])
    assert torch.equal(regularizer.anchor["second.live_lora_B"], model.second.live_lora_B.detach())
    assert regularizer.num_consolidated_tasks == 2
    assert regularizer.penalty(model).item() == 0.0


def test_ewc_state_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(3)
    model = TinyModel()
    regularizer = EWCRegularizer(lambda_=7.0)
    regularizer.consolidate(model, regression_batches(), mse_loss)
    with torch.no_grad():
        model.first.live_lora_A.mul_(1.5)
    regularizer.save(tmp_path / "ewc")
    written = sorted(p.name for p in (tmp_path / "ewc").iterdir())
    assert written == ["regularizer.json", "regularizer_state.safetensors"]  # no pickle
    loaded = EWCRegularizer.load(tmp_path / "ewc")
    assert loaded.lambda_ == 7.0 and loaded.num_consolidated_tasks == 1
    assert torch.allclose(loaded.penalty(model), regularizer.penalty(model))
    with pytest.raises(ValueError, match="holds a 'ewc' regulariser, not 'lwf'"):
        LwFRegularizer.load(tmp_path / "ewc")


def test_ewc_errors_name_the_problem():
    model = TinyModel()
    regularizer = EWCRegularizer()
    with pytest.raises(ValueError, match="no batches"):
        regularizer.consolidate(model, [], mse_loss)
    with pytest.raises(ValueError, match="scalar"):
        regularizer.consolidate(model, regression_batches(), lambda m, b: m(b[0]))
    with pytest.raises(KeyError, match="not in the model"):
        regularizer.consolidate(model, regression_batches(), mse_loss, parameter_names=["nope"])
    regularizer.consolidate(model, regression_batches(), mse_loss)
    smaller = TinyModel(live=False)
    with pytest.raises(KeyError, match="not found in the model"):
        regularizer.penalty(smaller)
    assert regularizer.penalty(smaller, strict=False).item() == 0.0
    with pytest.raises(ValueError, match="fisher"):
        regularizer.load_state_dict({"other.x": torch.zeros(1)})
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="none require grad"):
        EWCRegularizer.estimate_fisher(frozen, [torch.zeros(1, 2)], lambda m, b: m(b).sum())


# ----------------------------------------------------------------------------------------------
# LwF
# ----------------------------------------------------------------------------------------------


def test_lwf_is_zero_when_student_equals_teacher_and_positive_otherwise():
    logits = torch.randn(2, 5, 7)
    regularizer = LwFRegularizer(temperature=2.0, lambda_=1.0)
    assert regularizer.distillation(logits.clone(), logits).abs().item() < 1e-6
    assert regularizer.distillation(torch.randn(2, 5, 7), logits).item() > 0


def test_lwf_matches_kl_times_t_squared_over_masked_positions():
    torch.manual_seed(4)
    student = torch.randn(2, 4, 6, requires_grad=True)
    teacher = torch.randn(2, 4, 6, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    temperature, weight = 2.0, 0.7
    penalty = LwFRegularizer(temperature=temperature, lambda_=weight).distillation(student, teacher, mask)

    kept_student, kept_teacher = student[mask] / temperature, teacher[mask] / temperature
    manual = F.kl_div(
        F.log_softmax(kept_student, -1),
        F.log_softmax(kept_teacher, -1),
        log_target=True,
        reduction="batchmean",
    )
    assert torch.allclose(penalty, weight * temperature**2 * manual)
    # By hand for one position: sum p_t log(p_t / p_s).
    p_t = torch.softmax(teacher[0, 0] / temperature, -1)
    p_s = torch.softmax(student[0, 0] / temperature, -1)
    single = LwFRegularizer(temperature, 1.0).distillation(student[0, 0][None], teacher[0, 0][None])
    by_hand = temperature**2 * (p_t * (p_t / p_s).log()).sum()
    assert math.isclose(single.item(), by_hand.item(), rel_tol=1e-5)

    penalty.backward()
    assert teacher.grad is None  # the teacher is a target, not trained
    assert student.grad[~mask].abs().sum() == 0 and student.grad[mask].abs().sum() > 0


def test_lwf_edge_cases_and_errors():
    regularizer = LwFRegularizer()
    student = torch.randn(3, 4, requires_grad=True)
    empty = regularizer.distillation(student, torch.randn(3, 4), torch.zeros(3, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="slice the student"):
        regularizer.distillation(torch.randn(3, 5), torch.randn(3, 4))
    with pytest.raises(ValueError, match="mask"):
        regularizer.distillation(torch.randn(3, 4), torch.randn(3, 4), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperature"):
        LwFRegularizer(temperature=0)


def test_olora_finds_the_real_task_stacked_layer():
    layers = pytest.importorskip("hf_conpet.layers")
    torch.manual_seed(5)
    model = nn.Sequential(
        layers.TaskStackedLoraLinear(
            nn.Linear(6, 4), r=2, lora_alpha=4, lora_dropout=0.0, routing=layers.RoutingContext()
        )
    )
    layer = model[0]
    layer.add_task()
    layer.add_task()  # task 0 frozen into the buffers, task 1 live
    assert [name for name, _ in task_lora_layers(model)] == ["0"]
    expected = 0.5 * (layer.frozen_lora_A[0] @ layer.live_lora_A.T).abs().sum()
    penalty = OLoRARegularizer(0.5).penalty(model)
    assert torch.allclose(penalty, expected)
    penalty.backward()
    assert layer.live_lora_A.grad is not None and layer.frozen_lora_A.grad is None
