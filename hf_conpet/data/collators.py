"""Collators: task rows to model batches (causal-LM training and generation, seq2seq, classification)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

import torch

from .tasks import IGNORE_INDEX

if TYPE_CHECKING:
    from .stream import TaskStream


def _pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id (without mutating the tokenizer)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        warnings.warn(
            "the tokenizer has no pad token; padding with its eos token (padding is masked out "
            "by attention_mask and labels, so this is safe)",
            stacklevel=3,
        )
        return tokenizer.eos_token_id
    raise ValueError("the tokenizer has neither a pad token nor an eos token: set tokenizer.pad_token first")


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "the tokenizer has no eos token: targets end with eos so that generation knows when to "
            "stop; set tokenizer.eos_token first"
        )
    return tokenizer.eos_token_id


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer adds before and after a text (e.g. BOS; CLS ... SEP; ... EOS).

    Found by encoding a probe with and without special tokens, so left-truncation can keep them.
    """
    probe = "a b c"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    return [], []


def _field(example: Mapping[str, Any], key: str) -> Any:
    try:
        return example[key]
    except KeyError:
        hint = ""
        if key in ("prompt", "output", "task_id", "input"):
            hint = (
                "; with transformers.Trainer set TrainingArguments(remove_unused_columns=False) so "
                "the dataset's text columns reach the collator"
            )
        raise KeyError(f"example has no {key!r} field (fields: {sorted(example)}){hint}") from None


def _task_ids(examples: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    return torch.tensor([int(_field(example, "task_id")) for example in examples], dtype=torch.long)


def _references(example: Mapping[str, Any], target_field: str) -> list[str]:
    """Every acceptable answer of an example: its ``references``, else its target alone."""
    references = example.get("references")
    if references:
        return list(references)
    target = example.get(target_field)
    return [] if target is None else [target]


def _check_examples(examples: Any) -> Sequence[Mapping[str, Any]]:
    if isinstance(examples, Mapping) or not isinstance(examples, Sequence):
        raise TypeError("a collator takes a list of examples (dicts)")
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    return examples


def _pad(
    sequences: Sequence[Sequence[int]], value: int, side: str, multiple_of: Optional[int]
) -> torch.Tensor:
    width = max(len(sequence) for sequence in sequences)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    padded = []
    for sequence in sequences:
        filler = [value] * (width - len(sequence))
        padded.append(list(sequence) + filler if side == "right" else filler + list(sequence))
    return torch.tensor(padded, dtype=torch.long)


class _PromptEncoder:
    """Shared prompt handling: batch tokenisation, special tokens kept, truncation of the input only.

    A prompt over budget loses the middle of its *input* (the ``input`` column, found in the
    prompt), keeping the input's opening and its end (where a question or the last dialogue turn
    usually stands); the instruction before it and the answer cue after it ("Output: ") are never
    cut, since the model needs both to answer. A prompt whose input cannot be located (a custom prompt column)
    loses tokens from its left instead, which still keeps the cue where the answer must follow.
    """

    def __init__(
        self, tokenizer: Any, max_length: Optional[int], keep_suffix: bool, pad_to_multiple_of: Optional[int]
    ):
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2
        ):
            raise ValueError(f"max_length must be an int >= 2 or None, got {max_length!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_id = _pad_id(tokenizer)
        prefix, suffix = _special_affixes(tokenizer)
        self.prefix = prefix
        self.suffix = suffix if keep_suffix else []

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return list(self.tokenizer(list(texts), add_special_tokens=False)["input_ids"])

    def encode_prompts(
        self,
        texts: Sequence[str],
        budgets: Optional[Sequence[Optional[int]]] = None,
        inputs: Optional[Sequence[Optional[str]]] = None,
    ) -> list[list[int]]:
        """Prompt ids with special tokens; ``budgets[k]`` caps example k's length (None = max_length);
        ``inputs[k]``, the part of prompt k that may be cut."""
        encoded = []
        for position, (text, body) in enumerate(zip(texts, self.tokenize(texts))):
            budget = self.max_length if budgets is None or budgets[position] is None else budgets[position]
            if budget is not None:
                room = max(budget - len(self.prefix) - len(self.suffix), 0)
                if len(body) > room:
                    body = self._shortened(text, body, room, inputs[position] if inputs else None)
            encoded.append(self.prefix + body + self.suffix)
        return encoded

    def _shortened(self, text: str, body: list[int], room: int, cuttable: Optional[str]) -> list[int]:
        """``body`` cut to ``room`` tokens by dropping the middle of the input, else its left end."""
        start = text.rfind(cuttable) if cuttable else -1
        if start < 0:
            return body[-room:] if room else []
        end = start + len(cuttable)
        before, middle, after = self._split_at(text, body, start, end)
        keep = room - len(before) - len(after)
        if keep < 0:
            warnings.warn(
                f"a prompt without its input still takes {len(before) + len(after)} tokens (instruction and answer "
                f"cue), more than the {room} max_length leaves: its instruction loses tokens from the left; raise "
                "max_length",
                stacklevel=4,
            )
            return (before + after)[-room:] if room else []
        head = (keep + 1) // 2
        return before + middle[:head] + middle[len(middle) - (keep - head):] + after

    def _split_at(self, text: str, body: list[int], start: int, end: int):
        """The prompt's tokens before, inside and after the character span ``[start, end)``."""
        if getattr(self.tokenizer, "is_fast", False):
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            if len(offsets) == len(body):  # tokens keep the prompt's own tokenisation around the cut
                before = [t for t, (_, stop) in zip(body, offsets) if stop <= start]
                after = [t for t, (begin, stop) in zip(body, offsets) if begin >= end and stop > begin]
                middle = body[len(before): len(body) - len(after)]
                return before, middle, after
        before, middle, after = self.tokenize([text[:start], text[start:end], text[end:]])
        return before, middle, after


class CausalLMTrainingCollator:
    """Decoder-only training: ``prompt + output + eos``, loss only on ``output + eos``.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (-100 on prompt and padding) and
    ``task_ids``; right padding. Over ``max_length``, the prompt loses the middle of its input (never
    the instruction or the answer cue); the target is never cut (a target alone longer than ``max_length`` is an error).
    Prompt and target are tokenised separately, as generation will see them.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: Optional[int] = None,
        prompt_field: str = "prompt",
        target_field: str = "output",
        pad_to_multiple_of: Optional[int] = None,
    ) -> None:
        self.prompts = _PromptEncoder(
            tokenizer, max_length, keep_suffix=False, pad_to_multiple_of=pad_to_multiple_of
        )
        self.eos_id = _eos_id(tokenizer)
        self.max_length = max_length
        self.prompt_field = prompt_field
        self.target_field = target_field

    def targets(self, examples: Sequence[Mapping[str, Any]]) -> list[list[int]]:
        """Each example's target tokens (answer + eos); an error naming the first one that alone
        does not fit in ``max_length``. Cheap enough to run over a whole training split before
        training starts, so a long answer fails the run up front rather than mid-task."""
        targets = [
            ids + [self.eos_id]
            for ids in self.prompts.tokenize([_field(e, self.target_field) for e in examples])
        ]
        if self.max_length is not None:
            room = self.max_length - len(self.prompts.prefix)
            for example, target in zip(examples, targets):
                if len(target) > room:
                    longest = max(len(t) for t in targets) + len(self.prompts.prefix)
                    raise ValueError(
                        f"example {example.get('id', '?')!r}: its target alone takes {len(target)} tokens, "
                        f"more than max_length={self.max_length} allows; raise max_length (these examples' "
                        f"longest answer needs at least {longest + 1})"
                    )
        return targets

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        examples = _check_examples(examples)
        targets = self.targets(examples)
        budgets = None
        if self.max_length is not None:
            budgets = [self.max_length - len(target) for target in targets]
        prompts = self.prompts.encode_prompts([_field(e, self.prompt_field) for e in examples], budgets,
                                              [e.get("input") for e in examples])
        sequences = [prompt + target for prompt, target in zip(prompts, targets)]
        label_rows = [[IGNORE_INDEX] * len(prompt) + target for prompt, target in zip(prompts, targets)]
        multiple = self.prompts.pad_to_multiple_of
        return {
            "input_ids": _pad(sequences, self.prompts.pad_id, "right", multiple),
            "attention_mask": _pad([[1] * len(s) for s in sequences], 0, "right", multiple),
            "labels": _pad(label_rows, IGNORE_INDEX, "right", multiple),
            "task_ids": _task_ids(examples),
        }


def check_answers_fit(collator, tasks) -> None:
    """Run `collator`'s target check over every training answer of `tasks`; the error names the
    task. Only decoder-only training keeps every answer token: other collators pass."""
    if not isinstance(collator, CausalLMTrainingCollator):
        return
    for task in tasks:
        columns = [name for name in ("id", collator.target_field) if name in task.train.column_names]
        try:
            collator.targets(task.train.select_columns(columns).to_list())
        except ValueError as error:
            raise ValueError(f"task {task.name!r}: {error}") from None


class CausalLMGenerationCollator:
    """Decoder-only generation: the prompt only, LEFT padded so every row ends where decoding starts.

    Returns ``input_ids``, ``attention_mask``, ``task_ids`` and, for scoring, ``references`` (each
    example's acceptable answers) and ``example_ids`` — pop those (:data:`NON_MODEL_KEYS`) before
    calling the model.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: Optional[int] = None,
        prompt_field: str = "prompt",
        target_field: str = "output",
        pad_to_multiple_of: Optional[int] = None,
    ) -> None:
        self.prompts = _PromptEncoder(
            tokenizer, max_length, keep_suffix=False, pad_to_multiple_of=pad_to_multiple_of
        )
        self.prompt_field = prompt_field
        self.target_field = target_field

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        examples = _check_examples(examples)
        prompts = self.prompts.encode_prompts([_field(e, self.prompt_field) for e in examples],
                                              inputs=[e.get("input") for e in examples])
        multiple = self.prompts.pad_to_multiple_of
        return {
            "input_ids": _pad(prompts, self.prompts.pad_id, "left", multiple),
            "attention_mask": _pad([[1] * len(p) for p in prompts], 0, "left", multiple),
            "task_ids": _task_ids(examples),
            "references": [_references(example, self.target_field) for example in examples],
            "example_ids": [example.get("id") for example in examples],
        }


class Seq2SeqCollator:
    """Encoder-decoder: ``input_ids`` from the prompt, ``labels`` from ``output + eos`` (pad -> -100).

    ``mode="generate"`` leaves out ``labels`` and carries ``references`` / ``example_ids`` like
    the causal generation collator. The encoder input keeps the tokenizer's special tokens; over
    ``max_length`` its input is cut as in training; targets to ``max_target_length`` (eos kept).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: Optional[int] = None,
        max_target_length: Optional[int] = None,
        mode: str = "train",
        prompt_field: str = "prompt",
        target_field: str = "output",
        pad_to_multiple_of: Optional[int] = None,
    ) -> None:
        if mode not in ("train", "generate"):
            raise ValueError(f"unknown mode {mode!r}; expected 'train' or 'generate'")
        self.prompts = _PromptEncoder(
            tokenizer, max_length, keep_suffix=True, pad_to_multiple_of=pad_to_multiple_of
        )
        self.eos_id = _eos_id(tokenizer)
        self.max_target_length = max_target_length
        self.mode = mode
        self.prompt_field = prompt_field
        self.target_field = target_field

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        examples = _check_examples(examples)
        prompts = self.prompts.encode_prompts([_field(e, self.prompt_field) for e in examples],
                                              inputs=[e.get("input") for e in examples])
        multiple = self.prompts.pad_to_multiple_of
        batch: dict[str, Any] = {
            "input_ids": _pad(prompts, self.prompts.pad_id, "right", multiple),
            "attention_mask": _pad([[1] * len(p) for p in prompts], 0, "right", multiple),
            "task_ids": _task_ids(examples),
        }
        if self.mode == "generate":
            batch["references"] = [_references(example, self.target_field) for example in examples]
            batch["example_ids"] = [example.get("id") for example in examples]
            return batch
        targets = []
        for ids in self.prompts.tokenize([_field(e, self.target_field) for e in examples]):
            if self.max_target_length is not None:
                ids = ids[: self.max_target_length - 1]
            targets.append(ids + [self.eos_id])
        batch["labels"] = _pad(targets, IGNORE_INDEX, "right", None)
        return batch


class ClassificationCollator:
    """Sequence classification: tokenised text (right-truncated) plus label indices.

    ``label_ids`` is always the task-local index into ``Task.labels``; ``labels`` is that index
    (``label_space="local"``, one head per task) or ``stream.label_offset(task) + local``
    (``label_space="global"``, one head over the union label space).
    """

    def __init__(
        self,
        tokenizer: Any,
        stream: TaskStream,
        max_length: Optional[int] = None,
        label_space: str = "local",
        text_field: str = "prompt",
        pad_to_multiple_of: Optional[int] = None,
    ) -> None:
        if label_space not in ("local", "global"):
            raise ValueError(f"label_space must be 'local' or 'global', got {label_space!r}")
        self.prompts = _PromptEncoder(
            tokenizer, max_length, keep_suffix=True, pad_to_multiple_of=pad_to_multiple_of
        )
        self.max_length = max_length
        self.label_space = label_space
        self.text_field = text_field
        if stream.free_text_tasks:
            raise ValueError(
                f"tasks {stream.free_text_tasks} are free text (no label set): a classification head can only "
                "learn closed label sets; train them with a causal-LM or seq2seq model"
            )
        self.label_index = [{label: k for k, label in enumerate(task.labels)} for task in stream]
        self.offsets = [stream.label_offset(task) for task in stream]

    def _local_label(self, example: Mapping[str, Any]) -> int:
        task_id = int(_field(example, "task_id"))
        if not 0 <= task_id < len(self.label_index):
            raise ValueError(f"example {example.get('id', '?')!r} has task_id {task_id}, outside the stream")
        if example.get("label_id") is not None:
            return int(example["label_id"])
        output = _field(example, "output")
        if output not in self.label_index[task_id]:
            raise ValueError(
                f"example {example.get('id', '?')!r}: output {output!r} is not a label of task {task_id} "
                f"({list(self.label_index[task_id])})"
            )
        return self.label_index[task_id][output]

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        examples = _check_examples(examples)
        bodies = self.prompts.tokenize([_field(e, self.text_field) for e in examples])
        encoded = []
        room = (
            None
            if self.max_length is None
            else max(self.max_length - len(self.prompts.prefix) - len(self.prompts.suffix), 0)
        )
        for body in bodies:
            encoded.append(
                self.prompts.prefix + (body if room is None else body[:room]) + self.prompts.suffix
            )
        task_ids = _task_ids(examples)
        local = torch.tensor([self._local_label(e) for e in examples], dtype=torch.long)
        offsets = torch.tensor([self.offsets[int(t)] for t in task_ids], dtype=torch.long)
        multiple = self.prompts.pad_to_multiple_of
        return {
            "input_ids": _pad(encoded, self.prompts.pad_id, "right", multiple),
            "attention_mask": _pad([[1] * len(ids) for ids in encoded], 0, "right", multiple),
            "labels": local if self.label_space == "local" else local + offsets,
            "label_ids": local,
            "task_ids": task_ids,
        }
