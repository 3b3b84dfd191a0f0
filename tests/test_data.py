"""TaskStream loading (real benchmark + every error on small dirs) and the collators."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from hf_conpet.data import (
    DEFAULT_TEMPLATE,
    NON_MODEL_KEYS,
    CausalLMGenerationCollator,
    CausalLMTrainingCollator,
    ClassificationCollator,
    Seq2SeqCollator,
    Task,
    TaskStream,
    validate_task_name,
)

LONG_SEQUENCE = Path(__file__).parents[1].parent / "shared" / "data" / "long_sequence"
ORDER_A = ["yelp", "amazon", "mnli", "cb", "copa", "rte", "sst2", "boolq", "wic", "agnews"]


# --------------------------------------------------------------------------- helpers


def write_task(root, name, train, test, labels=("yes", "no"), instruction="Answer yes or no.", meta=None):
    """Write one task in the long_sequence layout; rows are (input, output) pairs or raw lines."""
    folder = Path(root) / name
    folder.mkdir(parents=True)
    for split, rows in (("train", train), ("test", test)):
        if rows is None:
            continue
        lines = []
        for number, row in enumerate(rows):
            if isinstance(row, str):
                lines.append(row)
            else:
                lines.append(
                    json.dumps({"id": f"{name}-{split}-{number}", "input": row[0], "output": row[1]})
                )
        (folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    if meta is not False:
        content = (
            meta if meta is not None else {"task": name, "labels": list(labels), "instruction": instruction}
        )
        (folder / "meta.json").write_text(json.dumps(content), encoding="utf-8")
    return folder


def yes_no_rows(count, prefix="question"):
    return [(f"{prefix} {k}", "yes" if k % 2 else "no") for k in range(count)]


@pytest.fixture
def small_root(tmp_path):
    write_task(tmp_path, "alpha", yes_no_rows(20, "alpha"), yes_no_rows(6, "alpha test"))
    write_task(
        tmp_path,
        "beta",
        [(f"beta {k}", ["red", "green", "blue"][k % 3]) for k in range(12)],
        [("beta test", "blue")],
        labels=("red", "green", "blue"),
        instruction="Name the colour.",
    )
    return tmp_path


WORDS = (
    "<pad> <unk> <s> </s> answer yes or no name the colour question alpha beta test output : "
    "red green blue a b c one two three four five six seven eight nine ten long"
).split()


def make_tokenizer(bos=True, pad=True, eos=True):
    """A WordLevel tokenizer over a few words: no network, deterministic ids."""
    vocab = {word: index for index, word in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
    specials = {"unk_token": "<unk>"}
    if eos:
        specials["eos_token"] = "</s>"
    if pad:
        specials["pad_token"] = "<pad>"
    if bos:
        specials["bos_token"] = "<s>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- the real benchmark


@pytest.fixture(scope="module")
def long_sequence():
    if not LONG_SEQUENCE.is_dir():
        pytest.skip(f"benchmark data not found at {LONG_SEQUENCE}")
    return TaskStream.from_dir(LONG_SEQUENCE, order=ORDER_A)


def test_from_dir_reads_the_long_sequence_benchmark(long_sequence):
    stream = long_sequence
    assert stream.names == ORDER_A and len(stream) == 10
    for position, task in enumerate(stream):
        meta = json.loads((LONG_SEQUENCE / task.name / "meta.json").read_text())
        assert task.index == position and stream[task.name] is task and stream[position] is task
        assert task.labels == meta["labels"] and task.instruction == meta["instruction"]
        assert len(task.train) + len(task.validation) == meta["n_train"]
        assert len(task.test) == meta["n_test"]
        assert len(task.validation) == round(0.1 * meta["n_train"])
        for split in (task.train, task.validation, task.test):
            assert {"id", "input", "output", "prompt", "task_id", "label_id"} <= set(split.column_names)
            assert set(split["task_id"]) == {position}
            assert set(split["output"]) <= set(task.labels)
        # validation is carved from train, never from test
        train_ids, validation_ids, test_ids = (
            set(task.train["id"]),
            set(task.validation["id"]),
            set(task.test["id"]),
        )
        assert not train_ids & validation_ids
        assert all("-train-" in example_id for example_id in validation_ids)
        assert not validation_ids & test_ids
        example = task.test[0]
        assert example["prompt"] == f"{task.instruction}\n{example['input']}\nOutput: "
        assert task.labels[example["label_id"]] == example["output"]


def test_from_dir_default_order_is_sorted_folder_names(long_sequence):
    stream = TaskStream.from_dir(LONG_SEQUENCE, max_train=5, max_test=3)
    assert stream.names == sorted(ORDER_A)
    assert all(len(task.train) == 5 and len(task.test) == 3 for task in stream)


def test_label_space(long_sequence):
    stream = long_sequence
    assert stream.labels_of("yelp") == stream["yelp"].labels == stream.labels_of(0)
    assert stream.label_offset("yelp") == 0
    assert stream.label_offset("amazon") == 5
    assert stream.label_offset("mnli") == 10
    assert stream.label_offset(stream["cb"]) == 13
    assert stream.num_labels == sum(len(task.labels) for task in stream)


# --------------------------------------------------------------------------- splits and options


def test_validation_split_is_seeded_and_disjoint(small_root):
    first = TaskStream.from_dir(small_root, validation_size=0.25, seed=3)["alpha"]
    again = TaskStream.from_dir(small_root, validation_size=0.25, seed=3)["alpha"]
    other = TaskStream.from_dir(small_root, validation_size=0.25, seed=4)["alpha"]
    assert first.validation["id"] == again.validation["id"]
    assert first.validation["id"] != other.validation["id"]
    assert len(first.validation) == 5 and len(first.train) == 15
    assert sorted(list(first.train["id"]) + list(first.validation["id"])) == sorted(
        f"alpha-train-{k}" for k in range(20)
    )
    assert len(first.test) == 6 and all("-test-" in example_id for example_id in first.test["id"])


@pytest.mark.parametrize(
    "size, expected",
    [(0.1, 2), (0.01, 1), (0.0, 0), (3, 3), (0, 0)],
)
def test_validation_size_fraction_or_count(small_root, size, expected):
    task = TaskStream.from_dir(small_root, validation_size=size)["alpha"]
    assert len(task.validation) == expected and len(task.train) == 20 - expected


@pytest.mark.parametrize("size", [1.0, -0.5, 20, 25, -1, "0.1", True])
def test_bad_validation_size(small_root, size):
    with pytest.raises(ValueError, match="validation_size"):
        TaskStream.from_dir(small_root, validation_size=size)


def test_max_train_and_max_test(small_root):
    task = TaskStream.from_dir(small_root, max_train=8, max_test=2, validation_size=0.25)["alpha"]
    assert len(task.train) == 8 and len(task.validation) == 2 and len(task.test) == 2
    assert task.test["id"] == ["alpha-test-0", "alpha-test-1"]
    assert not set(task.train["id"]) & set(task.validation["id"])
    with pytest.raises(ValueError, match="max_train"):
        TaskStream.from_dir(small_root, max_train=0)


def test_custom_template(small_root):
    stream = TaskStream.from_dir(small_root, template="[{task}] {input} ({labels}) =>")
    assert stream["beta"].test[0]["prompt"] == "[beta] beta test (red, green, blue) =>"
    assert stream["beta"].format_prompt("x", "{instruction}|{input}") == "Name the colour.|x"
    with pytest.raises(ValueError, match="template"):
        TaskStream.from_dir(small_root, template="{question}")


def test_stream_container(small_root):
    stream = TaskStream.from_dir(small_root)
    assert [task.name for task in stream] == stream.names == ["alpha", "beta"]
    assert "alpha" in stream and "gamma" not in stream
    with pytest.raises(KeyError, match="gamma"):
        stream["gamma"]
    with pytest.raises(IndexError):
        stream[2]
    combined = stream.concat("test")
    assert len(combined) == 7 and combined["task_id"] == [0] * 6 + [1]
    assert stream.concat("train", tasks=["beta"])["task_id"] == [1] * len(stream["beta"].train)


# --------------------------------------------------------------------------- errors


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TaskStream.from_dir(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no task folders"):
        TaskStream.from_dir(tmp_path)


@pytest.mark.parametrize("missing", ["train.jsonl", "test.jsonl", "meta.json"])
def test_missing_file_names_task_and_file(tmp_path, missing):
    folder = write_task(tmp_path, "alpha", yes_no_rows(10), yes_no_rows(2))
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=rf"'alpha'.*{missing}"):
        TaskStream.from_dir(tmp_path)


def test_malformed_json_line_gives_line_number(tmp_path):
    good = [json.dumps({"id": str(k), "input": "q", "output": "yes"}) for k in range(4)]
    write_task(
        tmp_path, "alpha", good[:2] + ['{"id": "2", "input": "q", "output": '] + good[3:], yes_no_rows(2)
    )
    with pytest.raises(ValueError, match=r"'alpha'.*train\.jsonl line 3"):
        TaskStream.from_dir(tmp_path)


def test_malformed_meta(tmp_path):
    folder = write_task(tmp_path, "alpha", yes_no_rows(10), yes_no_rows(2))
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"'alpha'.*meta\.json"):
        TaskStream.from_dir(tmp_path)


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"labels": []}, "non-empty"),
        ({"labels": None, "metric": "bleu"}, r"alpha.*meta\.json.*unknown metric 'bleu'"),
        ({"labels": ["Yes", "yes."]}, "normalisation"),
    ],
)
def test_bad_meta_labels(tmp_path, meta, message):
    write_task(tmp_path, "alpha", yes_no_rows(10), yes_no_rows(2), meta=meta)
    with pytest.raises(ValueError, match=message):
        TaskStream.from_dir(tmp_path)


def test_output_outside_labels(tmp_path):
    write_task(tmp_path, "alpha", yes_no_rows(10), [("q", "yes"), ("q", "maybe")])
    with pytest.raises(ValueError, match=r"'alpha'.*test\.jsonl.*'maybe'.*not one of"):
        TaskStream.from_dir(tmp_path)


def test_record_missing_field(tmp_path):
    write_task(tmp_path, "alpha", yes_no_rows(3) + [json.dumps({"id": "x", "output": "yes"})], yes_no_rows(2))
    with pytest.raises(ValueError, match=r"'alpha'.*example 3.*'input'"):
        TaskStream.from_dir(tmp_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_split(tmp_path, split):
    rows = {"train": yes_no_rows(10), "test": yes_no_rows(2)}
    rows[split] = []
    write_task(tmp_path, "alpha", rows["train"], rows["test"])
    with pytest.raises(ValueError, match=rf"'alpha'.*{split} split is empty"):
        TaskStream.from_dir(tmp_path)


def test_order_errors(small_root):
    with pytest.raises(ValueError, match="duplicate.*alpha"):
        TaskStream.from_dir(small_root, order=["alpha", "beta", "alpha"])
    with pytest.raises(ValueError, match="unknown task 'gamma'"):
        TaskStream.from_dir(small_root, order=["alpha", "gamma"])
    with pytest.raises(ValueError, match="list of task names"):
        TaskStream.from_dir(small_root, order="alpha")
    assert TaskStream.from_dir(small_root, order=["beta", "alpha"]).names == ["beta", "alpha"]


def test_invalid_task_folder_name(tmp_path):
    write_task(tmp_path, "bad-name", yes_no_rows(10), yes_no_rows(2))
    with pytest.raises(ValueError, match="(?i)invalid task name 'bad-name'"):
        TaskStream.from_dir(tmp_path)


@pytest.mark.parametrize("name", ["sst2", "_x", "A", "a" * 64, "yelp_2"])
def test_valid_task_names(name):
    assert validate_task_name(name) == name


@pytest.mark.parametrize("name", ["", "2sst", "a-b", "a b", "a" * 65, "é", "a.b", "../x", None, 3])
def test_invalid_task_names(name):
    with pytest.raises(ValueError, match="(?i)invalid task name"):
        validate_task_name(name)


def test_task_checks_its_own_fields():
    split = Dataset.from_dict(
        {"id": ["1"], "input": ["x"], "output": ["yes"], "prompt": ["x"], "task_id": [0]}
    )
    Task("ok", 0, ["yes", "no"], "", split, split, split)
    with pytest.raises(ValueError, match="(?i)invalid task name"):
        Task("not ok", 0, ["yes"], "", split, split, split)
    with pytest.raises(ValueError, match="lacks columns"):
        Task("ok", 0, ["yes"], "", split.remove_columns("prompt"), split, split)
    with pytest.raises(ValueError, match="index"):
        TaskStream([Task("ok", 1, ["yes"], "", split, split, split)])


# --------------------------------------------------------------------------- collators


def collator_examples():
    return [
        {
            "id": "a0",
            "prompt": "answer yes or no : one two three output :",
            "output": "yes",
            "task_id": 0,
            "label_id": 0,
        },
        {
            "id": "b0",
            "prompt": "name the colour : four output :",
            "output": "green",
            "task_id": 1,
            "label_id": 1,
        },
    ]


def test_causal_training_collator_masks_prompt_and_padding():
    tokenizer = make_tokenizer()
    examples = collator_examples()
    batch = CausalLMTrainingCollator(tokenizer)(examples)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "task_ids"}
    assert batch["task_ids"].dtype == torch.long and batch["task_ids"].tolist() == [0, 1]
    for row, example in enumerate(examples):
        prompt = [tokenizer.bos_token_id] + ids(tokenizer, example["prompt"])
        target = ids(tokenizer, example["output"]) + [tokenizer.eos_token_id]
        length = len(prompt) + len(target)
        assert batch["input_ids"][row, :length].tolist() == prompt + target
        assert batch["labels"][row, :length].tolist() == [-100] * len(prompt) + target
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (
            batch["input_ids"].shape[1] - length
        )
        # right padding: pad ids after the text, all masked out of the loss
        assert set(batch["input_ids"][row, length:].tolist()) <= {tokenizer.pad_token_id}
        assert set(batch["labels"][row, length:].tolist()) <= {-100}


def test_causal_training_truncates_the_prompt_from_the_left_never_the_target():
    tokenizer = make_tokenizer()
    long_prompt = "answer " + " ".join(["one", "two", "three", "four", "five", "six"] * 3) + " output :"
    example = {"id": "x", "prompt": long_prompt, "output": "red green", "task_id": 2}
    batch = CausalLMTrainingCollator(tokenizer, max_length=8)([example])
    target = ids(tokenizer, "red green") + [tokenizer.eos_token_id]
    assert batch["input_ids"].shape == (1, 8)
    row = batch["input_ids"][0].tolist()
    assert row[0] == tokenizer.bos_token_id  # special prefix kept
    assert row[-3:] == target  # the whole target
    assert row[1:-3] == ids(tokenizer, long_prompt)[-4:]  # the END of the prompt ("... output :")
    assert batch["labels"][0].tolist() == [-100] * 5 + target
    assert batch["task_ids"].tolist() == [2]
    with pytest.raises(ValueError, match="target alone"):
        CausalLMTrainingCollator(tokenizer, max_length=3)([example])


def test_generation_collator_left_pads_and_carries_references():
    tokenizer = make_tokenizer()
    examples = collator_examples()
    batch = CausalLMGenerationCollator(tokenizer)(examples)
    assert batch["references"] == [["yes"], ["green"]] and batch["example_ids"] == ["a0", "b0"]
    assert set(NON_MODEL_KEYS) <= set(batch) and "labels" not in batch
    width = batch["input_ids"].shape[1]
    for row, example in enumerate(examples):
        prompt = [tokenizer.bos_token_id] + ids(tokenizer, example["prompt"])
        assert batch["input_ids"][row, width - len(prompt) :].tolist() == prompt
        assert batch["attention_mask"][row].tolist() == [0] * (width - len(prompt)) + [1] * len(prompt)
        assert set(batch["input_ids"][row, : width - len(prompt)].tolist()) <= {tokenizer.pad_token_id}
    # the shorter prompt is padded on the LEFT
    assert batch["attention_mask"][1, 0].item() == 0 and batch["attention_mask"][:, -1].tolist() == [1, 1]
    assert batch["task_ids"].tolist() == [0, 1]


def test_generation_collator_truncates_from_the_left():
    tokenizer = make_tokenizer(bos=False)
    example = {"id": "x", "prompt": "one two three four five output :", "output": "yes", "task_id": 0}
    batch = CausalLMGenerationCollator(tokenizer, max_length=3)([example])
    assert batch["input_ids"][0].tolist() == ids(tokenizer, "five output :")


def test_seq2seq_collator():
    tokenizer = make_tokenizer(bos=False)
    examples = collator_examples()
    examples[1]["output"] = "red green blue"
    batch = Seq2SeqCollator(tokenizer)(examples)
    assert batch["input_ids"][0, : len(ids(tokenizer, examples[0]["prompt"]))].tolist() == ids(
        tokenizer, examples[0]["prompt"]
    )
    eos = tokenizer.eos_token_id
    assert batch["labels"].tolist() == [
        ids(tokenizer, "yes") + [eos, -100, -100],
        ids(tokenizer, "red green blue") + [eos],
    ]
    assert batch["task_ids"].tolist() == [0, 1]
    generate = Seq2SeqCollator(tokenizer, mode="generate")(examples)
    assert "labels" not in generate and generate["references"] == [["yes"], ["red green blue"]]
    short = Seq2SeqCollator(tokenizer, max_target_length=2)(examples)
    assert short["labels"][1].tolist() == ids(tokenizer, "red") + [eos]


def test_classification_collator_local_and_global_labels(small_root):
    tokenizer = make_tokenizer()
    stream = TaskStream.from_dir(small_root, tokenizer=tokenizer)
    examples = [stream["alpha"].test[0], stream["alpha"].test[1], stream["beta"].test[0]]
    local = stream.collator("classification")(examples)
    expected_local = [
        stream["alpha"].labels.index(examples[0]["output"]),
        stream["alpha"].labels.index(examples[1]["output"]),
        2,
    ]
    assert local["labels"].tolist() == expected_local == local["label_ids"].tolist()
    assert local["task_ids"].tolist() == [0, 0, 1]
    global_batch = stream.collator("classification", label_space="global")(examples)
    assert global_batch["labels"].tolist() == [expected_local[0], expected_local[1], 2 + 2]
    assert global_batch["label_ids"].tolist() == expected_local
    # without the label_id column the label is looked up from the output text
    stripped = [{key: value for key, value in example.items() if key != "label_id"} for example in examples]
    assert stream.collator("classification")(stripped)["labels"].tolist() == expected_local
    truncated = stream.collator("classification", max_length=3)(examples)
    assert truncated["input_ids"].shape[1] == 3
    with pytest.raises(ValueError, match="label_space"):
        ClassificationCollator(tokenizer, stream, label_space="both")


def test_collator_factory(small_root):
    tokenizer = make_tokenizer()
    stream = TaskStream.from_dir(small_root, tokenizer=tokenizer)
    assert isinstance(stream.collator(), CausalLMTrainingCollator)
    assert isinstance(stream.collator("causal_lm", "generate"), CausalLMGenerationCollator)
    assert isinstance(stream.collator("seq2seq", "generate"), Seq2SeqCollator)
    assert isinstance(stream.collator("classification", "generate"), ClassificationCollator)
    with pytest.raises(ValueError, match="kind"):
        stream.collator("vision")
    with pytest.raises(ValueError, match="mode"):
        stream.collator("causal_lm", "eval")
    with pytest.raises(ValueError, match="no tokenizer"):
        TaskStream.from_dir(small_root).collator()
    # the bound method itself works as a Trainer data_collator
    rows = [stream["alpha"].train[0], stream["beta"].train[0]]
    batch = stream.collator(rows)
    assert batch["task_ids"].tolist() == [0, 1] and (batch["labels"] != -100).any()


def test_missing_pad_token_falls_back_to_eos():
    tokenizer = make_tokenizer(pad=False)
    assert tokenizer.pad_token_id is None
    with pytest.warns(UserWarning, match="no pad token"):
        collator = CausalLMTrainingCollator(tokenizer)
    batch = collator(collator_examples())
    # padding uses eos but is masked out; the real eos at the end of each target is still learned
    assert batch["input_ids"][1, -1].item() == tokenizer.eos_token_id  # the shorter row is padded
    assert batch["attention_mask"][1, -1].item() == 0 and batch["labels"][1, -1].item() == -100
    assert (batch["labels"] == tokenizer.eos_token_id).sum().item() == 2
    assert tokenizer.pad_token_id is None  # the caller's tokenizer is left untouched


def test_tokenizer_without_pad_or_eos_is_refused():
    with pytest.raises(ValueError, match="neither a pad token nor an eos token"):
        CausalLMGenerationCollator(make_tokenizer(pad=False, eos=False))
    with pytest.raises(ValueError, match="no eos token"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CausalLMTrainingCollator(make_tokenizer(eos=False))


def test_missing_field_explains_remove_unused_columns():
    collator = CausalLMTrainingCollator(make_tokenizer())
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        collator([{"input_ids": [1, 2], "task_id": 0}])
    with pytest.raises(ValueError, match="empty"):
        collator([])


def test_collated_batches_drive_a_tiny_llama(small_root):
    """DataLoader over a datasets.Dataset -> loss on a tiny model; left-padded generate."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    stream = TaskStream.from_dir(small_root, tokenizer=tokenizer, template="{instruction} {input} output :")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    loader = torch.utils.data.DataLoader(
        stream.concat("train"), batch_size=4, shuffle=True, collate_fn=stream.collator(max_length=16)
    )
    batch = next(iter(loader))
    task_ids = batch.pop("task_ids")
    assert task_ids.shape == (4,)
    loss = model(**batch).loss
    assert torch.isfinite(loss)

    generate_batch = stream.collator("causal_lm", "generate")(
        [stream["alpha"].test[0], stream["beta"].test[0]]
    )
    references = generate_batch.pop("references")
    for key in ("example_ids", "task_ids"):
        generate_batch.pop(key)
    with torch.no_grad():
        output = model.generate(**generate_batch, max_new_tokens=2, do_sample=False)
    prompt_width = generate_batch["input_ids"].shape[1]
    assert output.shape[0] == 2 and prompt_width < output.shape[1] <= prompt_width + 2
    assert torch.equal(
        output[:, :prompt_width], generate_batch["input_ids"]
    )  # new tokens follow every prompt
    assert references == [[stream["alpha"].test[0]["output"]], ["blue"]]


def test_default_template_is_the_benchmark_prompt():
    assert DEFAULT_TEMPLATE == "{instruction}\n{input}\nOutput: "


def test_from_hub_wraps_load_dataset(monkeypatch):
    """No network: load_dataset is replaced by local DatasetDicts, ClassLabel and string outputs."""
    import datasets
    from datasets import ClassLabel, DatasetDict, Features, Value

    class_features = Features(
        {"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])}
    )
    fakes = {
        "org/sentiment": DatasetDict(
            train=Dataset.from_dict(
                {"sentence": [f"s{k}" for k in range(10)], "label": [k % 2 for k in range(10)]},
                features=class_features,
            ),
            test=Dataset.from_dict({"sentence": ["t0", "t1"], "label": [1, 0]}, features=class_features),
            unlabelled=Dataset.from_dict({"sentence": ["u"], "label": [-1]}, features=class_features),
        ),
        "org/colours": DatasetDict(
            train=Dataset.from_dict(
                {"id": [7, 8, 9], "text": ["a", "b", "c"], "answer": ["red", "blue", "red"]}
            ),
            dev=Dataset.from_dict({"text": ["d"], "answer": ["blue"]}),
        ),
    }
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return fakes[path]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    stream = TaskStream.from_hub(
        {
            "sentiment": {
                "path": "org/sentiment",
                "name": "default",
                "input_column": "sentence",
                "output_column": "label",
                "instruction": "Sentiment?",
            },
            "colours": {
                "path": "org/colours",
                "input_column": "text",
                "output_column": "answer",
                "labels": ["red", "blue"],
                "test_split": "dev",
                "validation_split": "train",
            },
        },
        validation_size=0.2,
    )
    assert calls[0] == ("org/sentiment", {"name": "default"})
    assert stream.names == ["sentiment", "colours"]
    sentiment, colours = stream
    assert sentiment.labels == ["negative", "positive"]
    assert list(sentiment.test["output"]) == ["positive", "negative"] and len(sentiment.validation) == 2
    assert sentiment.test[0]["prompt"] == "Sentiment?\nt0\nOutput: "
    assert list(colours.train["id"]) == ["7", "8", "9"] and list(colours.validation["id"]) == ["7", "8", "9"]
    assert list(colours.test["task_id"]) == [1] and list(colours.test["output"]) == ["blue"]
    with pytest.raises(ValueError, match="unlabelled"):
        TaskStream.from_hub(
            {
                "s": {
                    "path": "org/sentiment",
                    "input_column": "sentence",
                    "output_column": "label",
                    "test_split": "unlabelled",
                }
            }
        )
    # answers that are not a ClassLabel and no labels given: a free-text task, scored by ROUGE-L
    free = TaskStream.from_hub(
        {"c": {"path": "org/colours", "input_column": "text", "output_column": "answer", "test_split": "dev"}}
    )["c"]
    assert free.labels is None and free.metric == "rougeL" and list(free.test["label_id"]) == [-1]
