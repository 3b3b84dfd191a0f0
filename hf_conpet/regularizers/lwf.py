"""Learning without Forgetting (Li & Hoiem, 2016) on the shared LoRA: distil the model before the task."""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Regularizer, TrainingStep, trainable_parameters, zero_like_model


class LwFRegularizer(Regularizer):
    """Learning without Forgetting: distil the pre-task model's predictions into the current one.

    `distillation(student_logits, teacher_logits, mask) = lambda_ * T^2 * mean over masked
    positions of KL(softmax(teacher / T) || softmax(student / T))`. The T^2 keeps gradient
    magnitudes comparable across temperatures (Hinton et al.). Logits are `[..., classes]`, the
    mask `[...]`; the teacher gets no gradient.

    On a model (`penalty(model, step)`): the teacher is the shared module as the last task left it
    (`end_task` keeps a copy of the trainable parameters), run on the *new* task's inputs through
    `step.rerun`, so no second model is held; the distilled positions are the answer tokens (labels
    != -100; a classification head: every example). Before the first task ends there is no teacher
    and the penalty is zero. Over the whole vocabulary, at T = 2 by default (Li & Hoiem); ConPET
    distils the old tasks' label tokens at T = 1, which a free-text answer does not have.
    """

    kind = "lwf"

    def __init__(self, temperature: float = 2.0, lambda_: float = 1.0) -> None:
        if temperature <= 0:
            raise ValueError(f"LwF temperature must be > 0, got {temperature}")
        if lambda_ < 0:
            raise ValueError(f"LwF lambda_ must be >= 0, got {lambda_}")
        self.temperature = float(temperature)
        self.lambda_ = float(lambda_)
        self.teacher: dict[str, torch.Tensor] = {}
        self.num_tasks_seen = 0

    def settings(self) -> dict:
        return {"temperature": self.temperature, "lambda_": self.lambda_}

    def end_task(self, model: nn.Module, batches: Iterable[Any] = ()) -> None:
        """The model as this task leaves it is the next task's teacher."""
        self.teacher = trainable_parameters(model.base_model)
        self.num_tasks_seen += 1

    def penalty(self, model: nn.Module, step: TrainingStep | None = None) -> torch.Tensor:
        if not self.teacher or step is None or step.logits is None:
            return zero_like_model(model)
        teacher_logits = step.rerun(self.teacher).logits
        student_logits, mask = step.logits, None
        if step.labels is not None and student_logits.dim() == 3:
            labels = step.labels
            if step.task_type == "causal_lm":  # position i predicts token i + 1
                student_logits, teacher_logits, labels = student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:]
            mask = labels.ne(-100)
        return self.distillation(student_logits, teacher_logits, mask)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"teacher.{name}": value for name, value in self.teacher.items()}

    def state_info(self) -> dict[str, Any]:
        return {"num_tasks_seen": self.num_tasks_seen}

    def load_state_dict(self, state: dict[str, torch.Tensor], info: dict[str, Any] | None = None) -> None:
        unknown = [k for k in state if not k.startswith("teacher.")]
        if unknown:
            raise ValueError(f"LwF state must hold only 'teacher.<name>' tensors, got {unknown[:5]}")
        self.teacher = {k[len("teacher."):]: v for k, v in state.items()}
        count = (info or {}).get("num_tasks_seen", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"LwF num_tasks_seen must be a non-negative integer, got {count!r}")
        self.num_tasks_seen = count

    def distillation(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"LwF: student logits {tuple(student_logits.shape)} and teacher logits "
                f"{tuple(teacher_logits.shape)} differ; slice the student to the teacher's classes"
            )
        if mask is not None and mask.shape != student_logits.shape[:-1]:
            raise ValueError(
                f"LwF: mask {tuple(mask.shape)} must match the logits without their class dimension "
                f"{tuple(student_logits.shape[:-1])}"
            )
        temperature = self.temperature
        student = student_logits.float().reshape(-1, student_logits.shape[-1]) / temperature
        teacher = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1]) / temperature
        if mask is not None:
            keep = mask.reshape(-1).bool()
            student, teacher = student[keep], teacher[keep]
        if student.shape[0] == 0:
            return student_logits.sum() * 0.0  # nothing to distil, but stay in the graph
        teacher_log_probs = F.log_softmax(teacher, dim=-1)
        student_log_probs = F.log_softmax(student, dim=-1)
        per_position = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
        return self.lambda_ * temperature**2 * per_position.mean()
