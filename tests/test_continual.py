"""The continual harness on a tiny random Llama: selector growth, callback rows, checkpoints, resume."""

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from hf_conpet import ConPetConfig, ConPetModelForCausalLM
from hf_conpet.callback import ContinualCallback
from hf_conpet.data import TaskStream
from hf_conpet.evaluation import AnswerCache, evaluate_task
from hf_conpet.methods import method_config
from hf_conpet.selectors import ConPetSelector
from hf_conpet.trainer import ContinualTrainer, attach_method

from tiny_models import randomize_live_task, tiny_byte_tokenizer, tiny_llama_for

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "long_sequence"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_byte_tokenizer()


def small_stream(tokenizer, tasks=("sst2", "copa", "wic")):
    return TaskStream.from_dir(DATA, order=list(tasks), tokenizer=tokenizer, max_train=24, max_test=6, validation_size=4)


def args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, learning_rate=5e-3,
                  logging_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    values.update(overrides)
    return TrainingArguments(**values)


def make_model(tokenizer, method=None, **config):
    config = method_config(method, **config) if method else ConPetConfig(**config)
    return ConPetModelForCausalLM(tiny_llama_for(tokenizer), config, tokenizer=tokenizer)


def test_selector_growth_keeps_old_rows_bit_identical():
    selector = ConPetSelector(hidden_size=8, head_dim=4)
    selector.add_task()
    selector.add_task()
    rows, bias = selector.task_rows.detach().clone(), selector.task_bias.detach().clone()
    selector.add_task()
    assert selector.num_tasks == 3
    assert torch.equal(selector.task_rows[:2], rows) and torch.equal(selector.task_bias[:2], bias)


@pytest.mark.parametrize("method", ["conpet", "conpet_analytic", "sapt", "sapt_no_arm", "replay", "seq_lora", "oracle", "olora",
                                    "ewc", "lwf", "ewc_replay", "lwf_replay"])
def test_continual_trainer_fills_the_matrix_and_checkpoints(method, tokenizer, tmp_path):
    stream = small_stream(tokenizer)
    model = make_model(tokenizer, method)
    trainer = ContinualTrainer(model, stream, args(tmp_path), method=method, batches_per_task=3,
                               max_length=64, max_eval_examples=4, selector_steps=5, selector_batch_size=4)
    metrics = trainer.fit()
    assert [sum(v is not None for v in row) for row in metrics.matrix] == [1, 2, 3]
    assert all(0.0 <= value <= 1.0 for row in metrics.matrix for value in row if value is not None)
    summary = metrics.summary()
    assert set(summary) >= {"AP", "F.Ra", "BWT", "FWT", "selector_accuracy"}
    if method in ("conpet", "conpet_analytic", "sapt", "sapt_no_arm"):
        assert summary["selector_accuracy"] is not None and model.selector.num_tasks == 3
    expected_modules = 1 if method in ("replay", "seq_lora", "ewc", "lwf", "ewc_replay", "lwf_replay") else 3
    assert model.num_tasks == expected_modules
    checkpoint = tmp_path / "run" / "checkpoint"
    progress = json.loads((checkpoint / "progress.json").read_text())
    assert progress["finished"] == ["sst2", "copa", "wic"] and progress["method"] == method
    assert (checkpoint / "conpet_config.json").is_file() and (checkpoint / "replay").is_dir()
    assert json.loads((checkpoint / "metrics.json").read_text())["matrix"] == metrics.matrix


def test_replay_batches_mix_new_and_old_tasks(tokenizer, tmp_path):
    stream = small_stream(tokenizer)
    model = make_model(tokenizer, "replay")
    callback = ContinualCallback(model, stream, "replay", tokenizer=tokenizer, batch_size=4, batches_per_task=5)
    callback.memory.add_task(0, stream[0].train)
    dataset = callback.train_dataset(stream[1])
    assert len(dataset) == 20  # fixed cost: batches x batch size
    task_ids = dataset["task_id"]
    for start in range(0, 20, 4):
        assert sorted(task_ids[start : start + 4]) == [0, 0, 1, 1]


def test_resume_skips_finished_tasks(tokenizer, tmp_path):
    stream = small_stream(tokenizer)
    first = make_model(tokenizer, selector="conpet")
    trainer = ContinualTrainer(first, TaskStream(list(stream)[:2], tokenizer=tokenizer), args(tmp_path), method="conpet",
                               batches_per_task=2, max_length=64, max_eval_examples=3, selector_steps=3, selector_batch_size=4)
    trainer.fit()  # "killed" after two tasks: the checkpoint holds sst2 and copa

    resumed = make_model(tokenizer, selector="conpet")
    trained = []
    again = ContinualTrainer(resumed, stream, args(tmp_path), method="conpet", batches_per_task=2,
                             max_length=64, max_eval_examples=3, selector_steps=3, selector_batch_size=4)
    original_train = again._train
    again._train = lambda dataset, budget: (trained.append(again.callback.current_task.name), original_train(dataset, budget))
    metrics = again.fit()
    assert trained == ["wic"]
    assert resumed.task_names == ["sst2", "copa", "wic"]
    assert [sum(v is not None for v in row) for row in metrics.matrix] == [1, 2, 3]
    first_layer = next(iter(first.base_model.lora_layers().values()))
    resumed_layer = next(iter(resumed.base_model.lora_layers().values()))
    assert torch.equal(first_layer.frozen_lora_A, resumed_layer.frozen_lora_A[:2])


def test_resume_refuses_another_method(tokenizer, tmp_path):
    stream = small_stream(tokenizer, tasks=("sst2",))
    ContinualTrainer(make_model(tokenizer, selector="none"), stream, args(tmp_path), method="oracle", batches_per_task=1,
                     max_length=64, max_eval_examples=2).fit()
    with pytest.raises(ValueError, match="cannot resume"):
        ContinualTrainer(make_model(tokenizer, selector="none"), stream, args(tmp_path), method="seq_lora", batches_per_task=1,
                         max_length=64, max_eval_examples=2).fit()


def test_multitask_trains_one_module_on_everything(tokenizer, tmp_path):
    stream = small_stream(tokenizer)
    model = make_model(tokenizer, "multitask")
    metrics = ContinualTrainer(model, stream, args(tmp_path), method="multitask", batches_per_task=2,
                               max_length=64, max_eval_examples=3).fit()
    assert model.task_names == ["multitask"]
    assert len(metrics.matrix) == 3 and metrics.matrix[0][0] == metrics.matrix[2][0]


def test_attach_method_refuses_unknown(tokenizer):
    with pytest.raises(ValueError, match="Unknown method"):
        attach_method(make_model(tokenizer), "magic")


def test_selector_learning_rate_gives_sapt_query_and_key_their_own_rate(tokenizer, tmp_path):
    from hf_conpet.trainer import build_optimizer

    stream = small_stream(tokenizer, tasks=("sst2", "copa"))
    model = make_model(tokenizer, selector="sapt", selector_learning_rate=0.05)
    attach_method(model, "sapt")
    model.add_task("sst2")
    training_args = args(tmp_path, learning_rate=1e-3, weight_decay=0.01)
    optimizer = build_optimizer(model, training_args)
    by_rate = {group["lr"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    selector_ids = {id(p) for n, p in model.named_parameters() if n.startswith("selector.") and p.requires_grad}
    module_ids = {id(p) for p in model.trainable_parameters().values()}
    assert by_rate == {1e-3: module_ids, 0.05: selector_ids} and selector_ids and module_ids
    assert all(group["weight_decay"] == 0.01 for group in optimizer.param_groups)
    # the trainer uses it: in 3 Adam steps each key entry moves up to 3 x 0.05, far beyond 3 x 1e-3
    moves = []

    class Recording(ContinualTrainer):
        def on_task_start(self, num_batches):
            self.start_key = self.model.selector.live_key.detach().clone()

        def on_task_end(self):
            moves.append((self.model.selector.frozen_keys[-1] - self.start_key).abs().max().item())

    model = make_model(tokenizer, selector="sapt", selector_learning_rate=0.05)
    Recording(model, stream, args(tmp_path, learning_rate=1e-3), method="sapt", batches_per_task=3,
              max_length=64, max_eval_examples=2, resume=False).fit()
    # (the first key alone gets weight 1 whatever it is: no gradient; the second one learns)
    assert moves[0] == 0.0 and 0.02 < moves[1] <= 0.16, moves
    # plain learning rates everywhere: no optimizer of our own
    plain = make_model(tokenizer, selector="sapt")
    attach_method(plain, "sapt")
    plain.add_task("sst2")
    assert build_optimizer(plain, training_args) is None
    with pytest.raises(ValueError, match="selector_learning_rate must be > 0"):
        ConPetConfig(selector_learning_rate=0)


def test_answer_cache_reuses_frozen_top1_answers_only(tokenizer, monkeypatch):
    stream = small_stream(tokenizer, tasks=("sst2", "copa"))
    model = make_model(tokenizer, selector="none")
    for task in stream:
        model.add_task(task.name, labels=task.labels)
        randomize_live_task(model)
    collator = stream.collator("causal_lm", "generate", max_length=64, tokenizer=tokenizer)
    calls = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(k["input_ids"].shape[0]) or generate(*a, **k))

    # The last task is still live: its answers can change, so nothing is cached.
    cache = AnswerCache()
    evaluate_task(model, stream[1], collator, tokenizer, routing="oracle", batch_size=4, answer_cache=cache)
    assert cache == {} and sum(calls) == 6

    model.freeze_tasks()
    plain = [evaluate_task(model, t, collator, tokenizer, routing="oracle", batch_size=4) for t in stream]
    calls.clear()
    first = [evaluate_task(model, t, collator, tokenizer, routing="oracle", batch_size=4, answer_cache=cache) for t in stream]
    assert sum(calls) == 12 and len(cache) == 12
    calls.clear()
    again = [evaluate_task(model, t, collator, tokenizer, routing="oracle", batch_size=4, answer_cache=cache) for t in stream]
    assert calls == []  # every example was answered from the cache
    for a, b, c in zip(plain, first, again):
        assert a.predictions == b.predictions == c.predictions and a.accuracy == c.accuracy

    # Re-routed examples (here: forgotten entries) are generated alone, beside cached neighbours.
    for key in [("copa", "test", 1, 1), ("copa", "test", 4, 1)]:
        del cache[key]
    partial = evaluate_task(model, stream[1], collator, tokenizer, routing="oracle", batch_size=4, answer_cache=cache)
    assert calls == [1, 1] and partial.predictions == plain[1].predictions

    # A soft mixture of every module (O-LoRA's sum) changes with each module: never cached.
    soft = AnswerCache()
    evaluate_task(model, stream[0], collator, tokenizer, routing="sum", batch_size=4, answer_cache=soft)
    assert soft == {}


def test_methods_that_train_the_same_modules_get_the_same_modules_whatever_their_selector(tokenizer, tmp_path):
    """Module init draws from the run's seed and the task index, not from what a selector drew: the
    replay-trained and the analytic router can then be compared on identical task modules."""
    stream = small_stream(tokenizer, tasks=("sst2", "copa"))
    systems = {}
    for method in ("conpet", "conpet_analytic"):
        model = make_model(tokenizer, method)
        ContinualTrainer(model, stream, args(tmp_path / method), method=method, batches_per_task=2, max_length=64,
                         max_eval_examples=0, selector_steps=3, selector_batch_size=4).fit()
        systems[method] = model
    for first, second in zip(*(s.base_model.lora_layers().values() for s in systems.values())):
        for index in range(2):
            assert all(torch.equal(a, b) for a, b in zip(first.task_weights(index), second.task_weights(index)))
