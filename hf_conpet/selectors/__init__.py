"""Selectors route an input without a task id to task modules (one module per method, like PEFT's tuners)."""

from .base import SELECTOR_CLASSES, SumSelector, TaskEndContext, TaskSelector, pool_prompt
from .conpet import ConPetSelector
from .sapt import SaptSelector

__all__ = ["SELECTOR_CLASSES", "ConPetSelector", "SaptSelector", "SumSelector", "TaskEndContext", "TaskSelector", "pool_prompt"]
