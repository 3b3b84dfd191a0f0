"""What the fault-injection tests run in child processes that kill themselves with SIGKILL.

A child counts the filesystem operations hf_conpet makes (write-mode opens, mkdir, replace,
rename, fsync, rmtree, unlink, safetensors writes) once armed, and kills itself with SIGKILL just
before the k-th one runs: a kill -9 at a chosen instant of a save or of a run, including between
the two renames of a directory swap. Or it kills itself after a delay (a random instant).

The tests start the children from a forkserver that has imported torch and transformers once.
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

_armed = {"on": False, "at": None, "count": 0}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _tick() -> None:
    if not _armed["on"]:
        return
    _armed["count"] += 1
    if _armed["count"] == _armed["at"]:
        _die()


def _counting(function):
    def wrapper(*args, **kwargs):
        _tick()
        return function(*args, **kwargs)

    return wrapper


def _counting_open(function):
    def wrapper(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            _tick()
        return function(file, mode, *args, **kwargs)

    return wrapper


def install_counters() -> None:
    import safetensors.torch

    from hf_conpet import saved_layout
    from hf_conpet import checkpoint as checkpoint_module

    for name in ("replace", "rename", "fsync", "mkdir", "unlink", "rmdir"):
        setattr(os, name, _counting(getattr(os, name)))
    shutil.rmtree = _counting(shutil.rmtree)
    builtins.open = _counting_open(builtins.open)
    io.open = builtins.open
    for module in (safetensors.torch, saved_layout, checkpoint_module):
        module.save_file = _counting(module.save_file)


def arm(kill_at: int | None = None, after_seconds: float | None = None) -> None:
    install_counters()
    _armed.update(on=True, at=kill_at, count=0)
    if after_seconds is not None:
        timer = threading.Timer(after_seconds, _die)
        timer.daemon = True
        timer.start()


def events_seen() -> int:
    return _armed["count"]


# ----------------------------------------------------------------------------- a saved system
def build_system(num_tasks: int):
    """A tiny Llama system with a ConPET selector and `num_tasks` tasks of non-zero weights;
    the same bits in every process."""
    from hf_conpet import ConPetConfig, ConPetModelForCausalLM
    from hf_conpet.selectors import ConPetSelector

    from tiny_models import randomize_live_task, tiny_llama

    model = ConPetModelForCausalLM(tiny_llama(seed=0), ConPetConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.selector = ConPetSelector.for_model(model)
    for index in range(num_tasks):
        torch.manual_seed(100 + index)
        model.add_task(f"task_{index}", labels=["yes", "no"], instruction=f"Task {index}.")
        randomize_live_task(model)
    model.freeze_tasks()
    return model


def save_killed(destination: str, kill_at: int | None, report: str) -> None:
    """Save the 1-task system at `destination`, then the 2-task one over it, killed at event k."""
    torch.set_num_threads(1)
    build_system(1).save_pretrained(destination)
    model = build_system(2)
    arm(kill_at)
    model.save_pretrained(destination)
    _armed["on"] = False
    Path(report).write_text(str(events_seen()))


# ----------------------------------------------------------------------------- a continual run
def continual_run(output: str, method: str, kill_at: int | None, after_seconds: float | None, report: str | None) -> None:
    """A 3-task ContinualTrainer run into `output` (resuming what is there), maybe killed."""
    torch.set_num_threads(1)
    from transformers import TrainingArguments
    from transformers.utils import logging as hf_logging

    from hf_conpet import ConPetModelForCausalLM
    from hf_conpet.data import TaskStream
    from hf_conpet.methods import method_config
    from hf_conpet.trainer import ContinualTrainer

    from tiny_models import tiny_byte_tokenizer, tiny_llama_for

    hf_logging.set_verbosity_error()
    tokenizer = tiny_byte_tokenizer()
    data = TESTS.parent.parent / "shared" / "data" / "long_sequence"
    stream = TaskStream.from_dir(data, order=["sst2", "copa", "wic"], tokenizer=tokenizer, max_train=16, max_test=4,
                                 validation_size=4)
    model = ConPetModelForCausalLM(tiny_llama_for(tokenizer), method_config(method, new_task_init="random"), tokenizer=tokenizer)
    args = TrainingArguments(output_dir=output, per_device_train_batch_size=4, learning_rate=5e-3, logging_strategy="no",
                             report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = ContinualTrainer(model, stream, args, method=method, batches_per_task=2, max_length=64,
                               max_eval_examples=3, selector_steps=3, selector_batch_size=4)
    arm(kill_at, after_seconds)
    trainer.fit()
    _armed["on"] = False
    if report:
        Path(report).write_text(str(events_seen()))
