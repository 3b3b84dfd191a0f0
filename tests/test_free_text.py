"""Free-text tasks (no label set) scored by ROUGE-L: SuperNI's layout, truncation, budgets, the harness."""

import json
from pathlib import Path

import pytest
from rouge_score import rouge_scorer
from transformers import TrainingArguments

from hf_conpet import ConPetConfig, ConPetModelForCausalLM, ContinualMetrics
from hf_conpet.data import CausalLMGenerationCollator, CausalLMTrainingCollator, ClassificationCollator, Task, TaskStream
from hf_conpet.data.tasks import TEMPLATES
from hf_conpet.evaluation import MAX_ANSWER_TOKENS, evaluate_task, generation_budget
from hf_conpet.methods import method_config
from hf_conpet.metrics import load_rouge_l, rouge_l
from hf_conpet.model_card import render_model_card
from hf_conpet.names import MANIFEST_NAME
from hf_conpet.scoring import example_score, exact_match
from hf_conpet.trainer import ContinualTrainer

from tiny_models import tiny_byte_tokenizer, tiny_llama_for

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SUPERNI = SHARED / "superni"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_byte_tokenizer()


def superni(tokenizer, order, **options):
    options = {"max_train": 16, "max_test": 4, "validation_size": 4, "template": "superni", **options}
    return TaskStream.from_dir(SUPERNI, order=list(order), tokenizer=tokenizer, **options)


# ----------------------------------------------------------------------------- ROUGE-L


@pytest.mark.parametrize("prediction, reference, expected", [
    # tokens the cat sat on the mat / the cat is on the mat: LCS 5 of 6 both ways
    ("The cat sat on the mat.", "the cat is on the mat", 5 / 6),
    # Porter stemming: killed -> kill, so every token matches
    ("police killed the gunman", "Police kill the gunman", 1.0),
    # a b c d / a c e: LCS "a c" = 2; P = 2/4, R = 2/3, F = 2PR / (P + R) = 4/7
    ("a b c d", "a c e", 4 / 7),
    ("", "anything at all", 0.0),
    ("Positive.", "positive", 1.0),
])
def test_rouge_l_matches_hand_computed_values_and_rouge_score(prediction, reference, expected):
    assert rouge_l([prediction], [reference]) == pytest.approx(expected)
    direct = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, prediction)["rougeL"].fmeasure
    assert rouge_l([prediction], [[reference]]) == pytest.approx(direct)


def test_rouge_l_takes_the_best_reference_and_averages_examples():
    assert rouge_l(["the cat"], [["a dog", "the cat"]]) == 1.0
    assert example_score("rougeL", "a b c d", ["x y", "a c e"]) == pytest.approx(4 / 7)
    assert rouge_l(["the cat", "a b c d"], [["the cat"], ["a c e"]]) == pytest.approx((1 + 4 / 7) / 2)
    assert exact_match(["Yes."], [["no", "yes"]]) == 1.0
    with pytest.raises(ValueError, match="non-empty list of strings"):
        rouge_l(["x"], [[]])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_l(["x", "y"], [["x"]])


def test_rouge_l_equals_rouge_score_on_superni_answers():
    """Real SuperNI references against real (other examples') answers: exactly rouge_score's numbers."""
    rows = [json.loads(line) for line in (SUPERNI / "xsum" / "test.jsonl").read_text().splitlines()[:20]]
    predictions = [row["output"] for row in rows[1:]] + [rows[0]["output"]]
    references = [row["references"] for row in rows]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    direct = [max(scorer.score(ref, pred)["rougeL"].fmeasure for ref in refs) for pred, refs in zip(predictions, references)]
    assert rouge_l(predictions, references) == pytest.approx(sum(direct) / len(direct), abs=1e-12)
    assert 0.0 < rouge_l(predictions, references) < 0.5


def test_rouge_l_evaluate_module_loads_offline():
    metric = load_rouge_l()
    result = metric.compute(predictions=["the cat sat", "a b c d"], references=[["a cat sat down", "the cat sat"], ["a c e"]])
    assert result["rougeL"] == pytest.approx((1 + 4 / 7) / 2)


# ----------------------------------------------------------------------------- tasks


def test_superni_tasks_are_free_text_with_references_and_their_prompt(tokenizer):
    stream = superni(tokenizer, ["sent140", "xsum"])
    sent140 = stream["sent140"]
    assert sent140.labels is None and sent140.is_free_text and sent140.metric == "rougeL"
    assert stream.free_text_tasks == ["sent140", "xsum"] and stream.num_labels == 0
    row = sent140.test[0]
    assert row["label_id"] == -1 and row["references"] == [row["output"]]
    assert row["prompt"] == TEMPLATES["superni"].format(instruction=sent140.instruction, input=row["input"])
    assert row["prompt"].startswith("Definition: In this task") and row["prompt"].endswith("\nOutput: ")
    assert sent140.format_prompt("hello") == TEMPLATES["superni"].format(instruction=sent140.instruction, input="hello")
    with pytest.raises(ValueError, match="free-text task"):
        stream.labels_of("sent140")


def test_several_references_and_bad_ones(tokenizer):
    task = Task.from_records("qa", 0, None, "Answer.", [{"input": "q", "output": "Paris", "references": ["Paris", "paris, France"]}] * 3,
                             [{"input": "q", "output": "a"}], metric="rougeL", validation_size=1)
    assert task.train[0]["references"] == ["Paris", "paris, France"] and task.test[0]["references"] == ["a"]
    with pytest.raises(ValueError, match="'references' that are not a non-empty list"):
        Task.from_records("qa", 0, None, "", [{"input": "q", "output": "a", "references": "a"}] * 2, [{"input": "q", "output": "a"}])
    with pytest.raises(ValueError, match=r"task 'qa': unknown metric 'bleu'; hf_conpet scores \['exact_match', 'rougeL'\]"):
        Task.from_records("qa", 0, None, "", [{"input": "q", "output": "a"}] * 2, [{"input": "q", "output": "a"}], metric="bleu")
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        ContinualMetrics(task_names=["qa"], task_metrics=["bleu"])


def test_a_meta_with_an_unknown_metric_is_refused_naming_the_file(tmp_path):
    folder = tmp_path / "summaries"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text(json.dumps({"input": "a long text", "output": "short"}) + "\n" * 2 +
                                                json.dumps({"input": "b", "output": "c"}) + "\n")
    (folder / "meta.json").write_text(json.dumps({"labels": None, "metric": "bleu", "instruction": "Summarise."}))
    with pytest.raises(ValueError, match=r"summaries.*meta\.json.*unknown metric 'bleu'"):
        TaskStream.from_dir(tmp_path)


def test_a_classification_head_refuses_free_text_tasks(tokenizer):
    stream = superni(tokenizer, ["sent140"])
    with pytest.raises(ValueError, match=r"\['sent140'\] are free text.*classification head"):
        ClassificationCollator(tokenizer, stream)
    from hf_conpet import ConPetModelForSequenceClassification

    from tiny_models import tiny_bert

    model = ConPetModelForSequenceClassification(tiny_bert(), ConPetConfig(target_modules=["query", "value"], selector="none"))
    with pytest.raises(ValueError, match="needs labels=.*not free text"):
        model.add_task("sent140", labels=None)


# ----------------------------------------------------------------------------- long inputs


def _decoded(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("fast", [True, False])
def test_truncation_cuts_the_input_never_the_instruction_or_the_answer_cue(tokenizer, fast, monkeypatch):
    stream = superni(tokenizer, ["xsum"])
    example = stream["xsum"].test[0]
    assert len(tokenizer(example["prompt"])["input_ids"]) > 1200  # a long news article
    if not fast:  # the slow-tokenizer path: prefix, input and cue tokenised apart
        monkeypatch.setattr(type(tokenizer), "is_fast", property(lambda self: False))
    instruction_part = example["prompt"][: example["prompt"].rfind(example["input"])]
    for collator in (CausalLMTrainingCollator(tokenizer, max_length=900), CausalLMGenerationCollator(tokenizer, max_length=900)):
        batch = collator([example])
        ids = [i for i, m in zip(batch["input_ids"][0].tolist(), batch["attention_mask"][0].tolist()) if m]
        if "labels" in batch:  # training: the target follows the prompt whole
            labels = batch["labels"][0].tolist()
            target = [i for i in labels if i != -100][:-1]
            assert _decoded(tokenizer, target) == example["output"]
            ids = ids[: labels.index(next(i for i in labels if i != -100))]
        assert len(ids) <= 900
        text = _decoded(tokenizer, ids)
        assert text.startswith(instruction_part) and text.endswith("\nOutput: ")
        kept_input = text[len(instruction_part): -len("\nOutput: ")]
        # the input's opening and its end survive; its middle is what went
        assert kept_input[:200] == example["input"][:200] and kept_input[-100:] == example["input"][-100:]
        assert len(kept_input) < len(example["input"])


def test_a_prompt_that_fits_is_tokenised_as_one_text(tokenizer):
    stream = superni(tokenizer, ["sent140"])
    example = stream["sent140"].test[0]
    batch = CausalLMGenerationCollator(tokenizer, max_length=4096)([example])
    assert batch["input_ids"][0].tolist() == tokenizer(example["prompt"])["input_ids"]


def test_generation_budget_follows_each_tasks_answers(tokenizer):
    stream = superni(tokenizer, ["sent140", "xsum"], max_train=None)
    short, long_ = generation_budget(stream["sent140"], tokenizer), generation_budget(stream["xsum"], tokenizer)
    lengths = sorted(len(tokenizer(a)["input_ids"]) for a in stream["sent140"].train["output"])
    assert short == lengths[-1] + 1  # "positive"/"negative": the 95th percentile is the longest, + end of answer
    assert long_ == MAX_ANSWER_TOKENS  # byte-level summaries are longer than the cap
    assert generation_budget(stream["xsum"], tokenizer, cap=1000) > 100
    labelled = TaskStream.from_dir(SHARED / "long_sequence", order=["sst2"], tokenizer=tokenizer, max_test=2)["sst2"]
    assert generation_budget(labelled, tokenizer) == max(len(tokenizer(label)["input_ids"]) for label in labelled.labels) + 2


def test_evaluation_batches_by_length_but_answers_in_split_order(tokenizer, monkeypatch):
    """Answers come back in the split's order although batches run longest prompt first."""
    import hf_conpet.evaluation as evaluation

    stream = superni(tokenizer, ["personachat"], max_test=7)
    model = ConPetModelForCausalLM(tiny_llama_for(tokenizer), ConPetConfig(selector="none"), tokenizer=tokenizer)
    model.add_task("personachat")
    seen_widths = []

    def prompt_lengths(model, tokenizer, batch, route_kwargs, max_new_tokens):
        seen_widths.append(batch["attention_mask"].sum(dim=1).tolist())
        return [str(n) for n in batch["attention_mask"].sum(dim=1).tolist()]

    monkeypatch.setattr(evaluation, "_generate_answers", prompt_lengths)
    score = evaluate_task(model, stream["personachat"], CausalLMGenerationCollator(tokenizer, max_length=4096), tokenizer,
                          routing="oracle", batch_size=3)
    expected = [str(len(tokenizer(p)["input_ids"])) for p in stream["personachat"].test["prompt"]]
    assert score.predictions == expected and score.metric == "rougeL"
    flat = [width for batch in seen_widths for width in batch]
    assert flat == sorted(flat, reverse=True)


# ----------------------------------------------------------------------------- end to end


def test_free_text_stream_trains_scores_saves_and_loads(tokenizer, tmp_path):
    """A labelled task and two free-text ones through ContinualTrainer: per-task metrics everywhere."""
    labelled = TaskStream.from_dir(SHARED / "long_sequence", order=["sst2"], max_train=16, max_test=4, validation_size=4,
                                   template="superni")
    stream = TaskStream([labelled["sst2"], *[task.with_index(k + 1) for k, task in enumerate(superni(tokenizer, ["sent140", "csqa"]))]],
                        tokenizer=tokenizer)
    model = ConPetModelForCausalLM(tiny_llama_for(tokenizer), method_config("conpet"), tokenizer=tokenizer)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, learning_rate=5e-3,
                             logging_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = ContinualTrainer(model, stream, args, method="conpet", batches_per_task=2, max_length=256,
                               max_eval_examples=4, selector_steps=3, selector_batch_size=4)
    metrics = trainer.fit()
    assert metrics.task_metrics == ["exact_match", "rougeL", "rougeL"] and metrics.metric == "mixed"
    assert metrics.metric_label == "exact_match / rougeL"
    assert [sum(v is not None for v in row) for row in metrics.matrix] == [1, 2, 3]
    table = metrics.table()
    assert table.splitlines()[2].split()[:4] == ["metric", "exact_match", "rougeL", "rougeL"]
    assert "exact_match / rougeL, 3/3 tasks trained" in table
    assert model.tasks[1].metadata["metric"] == "rougeL"
    assert model.tasks[1].metadata["prompt_template"] == TEMPLATES["superni"]
    assert model.tasks[1].metadata["max_new_tokens"] == generation_budget(stream["sent140"], tokenizer)

    folder = tmp_path / "system"
    model.save_pretrained(folder, metrics=metrics.to_dict())
    loaded = ConPetModelForCausalLM.from_pretrained(folder, base_model=tiny_llama_for(tokenizer))
    assert loaded.tasks[2].labels is None and loaded.tasks[2].metadata["metric"] == "rougeL"
    again = ContinualMetrics.from_dict(json.loads((folder / MANIFEST_NAME).read_text())["metrics"])
    assert again.task_metrics == metrics.task_metrics
    rescored = evaluate_task(loaded, stream["csqa"], stream.collator("causal_lm", "generate", max_length=256), tokenizer,
                             routing="oracle", max_examples=4)
    assert rescored.metric == "rougeL" and 0.0 <= rescored.accuracy <= 1.0

    card = render_model_card(json.loads((folder / MANIFEST_NAME).read_text()), metrics.to_dict(), "user/superni").content
    assert "| 2 | `sent140` | free text | ROUGE-L |" in card and "| 1 | `sst2` | `Good`, `Bad` | accuracy |" in card
    assert "`a[j][i]` is the score (each task's own metric" in card
    assert "- exact_match\n- rougeL" in card


def test_a_training_answer_longer_than_max_length_fails_before_training(tokenizer, tmp_path):
    """ContinualTrainer checks every task's answers before the first step: no module is added."""
    stream = superni(tokenizer, ["sent140", "samsum"])
    model = ConPetModelForCausalLM(tiny_llama_for(tokenizer), method_config("conpet"), tokenizer=tokenizer)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                             disable_tqdm=True)
    trainer = ContinualTrainer(model, stream, args, method="conpet", batches_per_task=2, max_length=96)
    with pytest.raises(ValueError, match=r"task 'samsum': example 'samsum-train-\d+': its target alone takes \d+ tokens"):
        trainer.fit()
    assert model.num_tasks == 0
