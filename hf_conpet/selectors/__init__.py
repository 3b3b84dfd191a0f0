"""Selectors route an input without a task id to task modules (one module per method, like PEFT's tuners).

They read prompt features (`hf_conpet.features`), never the model.
"""

from .analytic import AnalyticSelector
from .base import SELECTOR_CLASSES, SumSelector, TaskEndContext, TaskSelector
from .conpet import ConPetSelector
from .sapt import SaptSelector

__all__ = ["SELECTOR_CLASSES", "AnalyticSelector", "ConPetSelector", "SaptSelector", "SumSelector", "TaskEndContext", "TaskSelector"]
