"""Scoring one answer against its references: exact match and ROUGE-L, by the task's metric name.

Every task names its metric (``meta.json``'s ``"metric"``): closed label sets use exact match, free
text (summaries, dialogue turns, extracted spans) ROUGE-L as SAPT and SuperNI compute it. A score is
a fraction in [0, 1] whatever the metric, so the accuracy matrix and its AP / F.Ra / BWT / FWT work
unchanged; tables print percentages. An example with several references gets its best score.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

__all__ = [
    "EXACT_MATCH_MODULE_PATH",
    "METRICS",
    "METRIC_DISPLAY_NAMES",
    "ROUGE_L_MODULE_PATH",
    "check_metric",
    "evaluate_metric_info",
    "example_score",
    "exact_match",
    "load_exact_match",
    "load_rouge_l",
    "normalize_answer",
    "rouge_l",
    "score_name",
]

_MODULES = Path(__file__).resolve().parent / "metrics_module"
#: The local ``evaluate`` modules; loading them by path needs no Hub access.
EXACT_MATCH_MODULE_PATH = _MODULES / "conpet_exact_match.py"
ROUGE_L_MODULE_PATH = _MODULES / "conpet_rouge_l.py"

_WHITESPACE = re.compile(r"\s+")

References = Union[str, Sequence[str]]


def normalize_answer(text: str) -> str:
    """Lower-case, delete punctuation, collapse whitespace: the Long Sequence benchmark's scoring.

    Punctuation is any Unicode ``P*`` character and is deleted, not replaced by a space, as in the
    SQuAD / SuperNI normaliser. Unlike SuperNI we do NOT drop articles: the label "A" (COPA)
    would vanish and any answer "the" would match it.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_answer expects a str, got {type(text).__name__}")
    lowered = text.lower()
    without_punctuation = "".join(ch for ch in lowered if not unicodedata.category(ch).startswith("P"))
    return _WHITESPACE.sub(" ", without_punctuation).strip()


def _exact_match_one(prediction: str, references: Sequence[str]) -> float:
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(answer) for answer in references))


@lru_cache(maxsize=1)
def _rouge_scorer():
    """SuperNI's scorer: rouge_score's default tokenizer (lower-case, alphanumeric words), Porter stemming."""
    from rouge_score import rouge_scorer  # imported lazily: nltk comes with it

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _rouge_l_one(prediction: str, references: Sequence[str]) -> float:
    scorer = _rouge_scorer()
    return max(scorer.score(answer, prediction)["rougeL"].fmeasure for answer in references)


#: Metric name (as ``meta.json`` spells it) -> score of one prediction against its references.
METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "exact_match": _exact_match_one,
    "rougeL": _rouge_l_one,
}


#: How tables, cards and plots name each metric's scores.
METRIC_DISPLAY_NAMES = {"exact_match": "accuracy", "rougeL": "ROUGE-L"}


def score_name(metrics: Sequence[str]) -> str:
    """What the scores of tasks with these metrics are called: "accuracy", "ROUGE-L", or "score" if mixed."""
    names = {METRIC_DISPLAY_NAMES.get(metric, str(metric)) for metric in metrics}
    return names.pop() if len(names) == 1 else "score"


def check_metric(name: Any, where: str = "metric") -> str:
    """``name`` if hf_conpet can score it, else a ValueError naming the known metrics."""
    if not isinstance(name, str) or name not in METRICS:
        raise ValueError(f"{where}: unknown metric {name!r}; hf_conpet scores {sorted(METRICS)}")
    return name


def _accepted(reference: References, position: int) -> list[str]:
    accepted = [reference] if isinstance(reference, str) else list(reference)
    if not accepted or not all(isinstance(answer, str) for answer in accepted):
        raise ValueError(f"reference {position} must be a string or a non-empty list of strings, got {reference!r}")
    return accepted


def example_score(metric: str, prediction: str, references: References) -> float:
    """One prediction's score in [0, 1]: the best over its references (a string = one reference)."""
    return METRICS[check_metric(metric)](prediction, _accepted(references, 0))


def _mean_score(metric: str, predictions: Sequence[str], references: Sequence[References]) -> float:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError(f"{metric} expects sequences of strings, not a single string")
    if len(predictions) != len(references):
        raise ValueError(f"{metric} got {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError(f"{metric} got no predictions: the score of an empty set is undefined")
    scorer = METRICS[metric]
    total = sum(scorer(prediction, _accepted(reference, k))
                for k, (prediction, reference) in enumerate(zip(predictions, references)))
    return total / len(predictions)


def exact_match(predictions: Sequence[str], references: Sequence[References]) -> float:
    """Fraction of predictions equal to one of their references after :func:`normalize_answer`."""
    return _mean_score("exact_match", predictions, references)


def rouge_l(predictions: Sequence[str], references: Sequence[References]) -> float:
    """Mean ROUGE-L F-measure in [0, 1] (best over each example's references), as SuperNI scores it."""
    return _mean_score("rougeL", predictions, references)


def _load_module(path: Path, load_kwargs: dict[str, Any]):
    import evaluate  # imported lazily: it pulls in pandas and friends

    return evaluate.load(str(path), **load_kwargs)


def evaluate_metric_info(description: str, citation: str, inputs_description: str, *, several_references: bool):
    """The ``evaluate.MetricInfo`` both local modules declare: string predictions, and one string
    reference (exact match) or a list of them (ROUGE-L) per prediction."""
    import datasets
    import evaluate

    reference = datasets.List(datasets.Value("string")) if several_references else datasets.Value("string")
    return evaluate.MetricInfo(
        module_type="metric", description=description, citation=citation, inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value("string"), "references": reference}),
    )


def load_exact_match(**load_kwargs: Any):
    """Our exact match as an ``evaluate`` module, from the file shipped in the package.

    ``evaluate.load("exact_match")`` would fetch from the Hub (unreachable offline) and uses a
    different normalisation; loading a local path never touches the network.
    """
    return _load_module(EXACT_MATCH_MODULE_PATH, load_kwargs)


def load_rouge_l(**load_kwargs: Any):
    """Our ROUGE-L (SuperNI's: stemmed, F-measure, best over references) as a local ``evaluate`` module.

    ``evaluate.load("rouge")`` needs the Hub and averages over references differently.
    """
    return _load_module(ROUGE_L_MODULE_PATH, load_kwargs)
