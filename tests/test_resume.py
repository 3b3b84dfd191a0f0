"""A resumed run is the same run: bit-identical adapters, selector and metrics, for every method and
init, through ContinualTrainer and through a user's own stock-Trainer loop; and a resume with other
settings is refused by name before anything is loaded or written."""

import json

import pytest
import torch
from transformers import Trainer, TrainingArguments, set_seed

from hf_conpet.callback import ContinualCallback
from hf_conpet.checkpoint import ResumeMismatchError
from hf_conpet.trainer import ContinualTrainer, attach_method

from test_continual import args, make_model, small_stream
from tiny_models import tiny_byte_tokenizer


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_byte_tokenizer()


def system_state(model) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if model.selector is not None:
        state.update({f"selector::{k}": v.detach().clone() for k, v in model.selector.state_dict().items()})
    return state


def assert_same_state(reference: dict, resumed: dict) -> None:
    assert reference.keys() == resumed.keys()
    different = [k for k in reference if reference[k].shape != resumed[k].shape or not torch.equal(reference[k], resumed[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def continual_run(tokenizer, tmp_path, method, init, stop_before=None, **overrides):
    model = make_model(tokenizer, method, new_task_init=init)

    class StoppingTrainer(ContinualTrainer):
        def on_task_start(self, num_batches):
            if self.callback.current_task.index == stop_before:
                raise Interrupted

    options = dict(batches_per_task=3, max_length=64, max_eval_examples=4, selector_steps=5, selector_batch_size=4)
    options.update(overrides)
    trainer = StoppingTrainer(model, small_stream(tokenizer), args(tmp_path), method=method, **options)
    try:
        metrics = trainer.fit()
    except Interrupted:
        return None, None
    return model, metrics


@pytest.mark.parametrize("method", ["conpet", "conpet_analytic", "sapt", "oracle", "olora", "replay", "seq_lora",
                                    "ewc", "lwf_replay"])
@pytest.mark.parametrize("init", ["previous", "random"])
def test_resumed_continual_trainer_run_equals_the_uninterrupted_one(method, init, tokenizer, tmp_path):
    reference, reference_metrics = continual_run(tokenizer, tmp_path / "whole", method, init)
    continual_run(tokenizer, tmp_path / "cut", method, init, stop_before=2)
    resumed, resumed_metrics = continual_run(tokenizer, tmp_path / "cut", method, init)
    assert_same_state(system_state(reference), system_state(resumed))
    assert resumed_metrics.matrix == reference_metrics.matrix
    assert resumed_metrics.selector_counts == reference_metrics.selector_counts


def user_loop(tokenizer, out, stop_before=None):
    """The README's stock-Trainer loop, with resume: new modules draw their random init from the
    global generator, which only the checkpoint's generator state can put back."""
    set_seed(0)  # a user's script starts from a seed; the resumed process then starts from it again
    model = make_model(tokenizer, selector="conpet", new_task_init="random")
    stream = small_stream(tokenizer)
    attach_method(model, "conpet")
    callback = ContinualCallback(model, stream, "conpet", output_dir=str(out), batch_size=4, batches_per_task=2,
                                 max_length=64, max_eval_examples=3, selector_steps=3, selector_batch_size=4)
    finished = callback.resume()
    for task in stream:
        if task.name in finished:
            continue
        if task.index == stop_before:
            return None, None
        model.add_task(task.name, labels=task.labels, instruction=task.instruction)
        torch.rand(7)  # whatever the user's code draws before training a task is part of the run too
        task_args = TrainingArguments(str(out), max_steps=2, per_device_train_batch_size=4, learning_rate=5e-3,
                                      remove_unused_columns=False, report_to=[], use_cpu=True, disable_tqdm=True,
                                      save_strategy="no", logging_strategy="no")
        Trainer(model=model, args=task_args, train_dataset=callback.train_dataset(task),
                data_collator=callback.data_collator, callbacks=[callback]).train()
    return model, callback.metrics


def test_resumed_user_loop_equals_the_uninterrupted_one(tokenizer, tmp_path):
    reference, reference_metrics = user_loop(tokenizer, tmp_path / "whole")
    user_loop(tokenizer, tmp_path / "cut", stop_before=1)
    resumed, resumed_metrics = user_loop(tokenizer, tmp_path / "cut")
    assert_same_state(system_state(reference), system_state(resumed))
    assert resumed_metrics.matrix == reference_metrics.matrix


def test_resume_with_other_settings_names_each_of_them(tokenizer, tmp_path):
    continual_run(tokenizer, tmp_path, "conpet", "previous", stop_before=1)
    progress = (tmp_path / "run" / "checkpoint" / "progress.json").read_bytes()
    with pytest.raises(ResumeMismatchError) as raised:
        continual_run(tokenizer, tmp_path, "conpet", "previous", batches_per_task=5, selector_steps=7)
    message = str(raised.value)
    assert "batches_per_task: checkpoint 3, now 5" in message and "selector_steps: checkpoint 5, now 7" in message
    assert (tmp_path / "run" / "checkpoint" / "progress.json").read_bytes() == progress
    with pytest.raises(ResumeMismatchError, match="learning_rate: checkpoint 0.005, now 0.001"):
        model = make_model(tokenizer, selector="conpet")
        ContinualTrainer(model, small_stream(tokenizer), args(tmp_path, learning_rate=1e-3), method="conpet",
                         batches_per_task=3, max_length=64, max_eval_examples=4, selector_steps=5,
                         selector_batch_size=4).fit()


def test_checkpoint_records_generator_states_and_settings(tokenizer, tmp_path):
    continual_run(tokenizer, tmp_path, "seq_lora", "previous", stop_before=1)
    checkpoint = tmp_path / "run" / "checkpoint"
    progress = json.loads((checkpoint / "progress.json").read_text())
    assert progress["settings"]["batches_per_task"] == 3 and progress["settings"]["learning_rate"] == 5e-3
    assert (checkpoint / "rng_state.json").is_file() and (checkpoint / "rng_state.safetensors").is_file()


def test_a_multitask_run_is_not_resumed_with_a_longer_stream(tokenizer, tmp_path):
    from hf_conpet.data import TaskStream

    stream = small_stream(tokenizer)
    first = TaskStream([stream[0]], tokenizer=tokenizer)
    options = dict(method="multitask", batches_per_task=2, max_length=64, max_eval_examples=3)
    ContinualTrainer(make_model(tokenizer, "multitask"), first, args(tmp_path), **options).fit()
    with pytest.raises(ResumeMismatchError, match="resuming would train nothing new"):
        ContinualTrainer(make_model(tokenizer, "multitask"), stream, args(tmp_path), resume=True, **options).fit()


@pytest.mark.parametrize("method", ["conpet", "replay"])
def test_a_run_under_a_binding_memory_budget_resumes_bit_for_bit(method, tokenizer, tmp_path):
    """30 rows for 3 tasks of 20: the memory and ConPET's selector cache shrink at every task end,
    in the same way in an uninterrupted and in a resumed run."""
    reference, reference_metrics = continual_run(tokenizer, tmp_path / "whole", method, "random", memory_budget=30)
    continual_run(tokenizer, tmp_path / "cut", method, "random", stop_before=2, memory_budget=30)
    resumed, resumed_metrics = continual_run(tokenizer, tmp_path / "cut", method, "random", memory_budget=30)
    assert_same_state(system_state(reference), system_state(resumed))
    assert resumed_metrics.matrix == reference_metrics.matrix
    replay = json.loads((tmp_path / "whole" / "run" / "checkpoint" / "replay" / "replay_memory.json").read_text())
    assert replay["budget"] == 30 and sum(task["num_examples"] for task in replay["tasks"]) <= 30
