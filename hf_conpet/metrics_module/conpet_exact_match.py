"""Exact match with hf_conpet's normalisation, as an `evaluate` module loadable from this path.

`evaluate.load("exact_match")` needs the Hub and normalises differently (no punctuation
stripping by default); `hf_conpet.metrics.load_exact_match()` loads this file instead, offline.
The scoring itself is imported from hf_conpet so there is exactly one definition of it.
"""

import evaluate

from hf_conpet.scoring import evaluate_metric_info, exact_match

_DESCRIPTION = (
    "Fraction of predictions equal to their reference after lower-casing, deleting punctuation "
    "and collapsing whitespace (the Long Sequence continual-learning benchmark's scoring)."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated answers.
    references (list of str): gold answers, one per prediction.
Returns:
    exact_match (float): fraction in [0, 1].
Examples:
    >>> metric = hf_conpet.metrics.load_exact_match()
    >>> metric.compute(predictions=["Good.", "bad"], references=["good", "Good"])
    {'exact_match': 0.5}
"""

_CITATION = """\
@article{zhao2024sapt,
  title={SAPT: A Shared Attentive Framework for Parameter-Efficient Continual Learning
         of Large Language Models},
  author={Zhao, Weixiang and others},
  journal={arXiv preprint arXiv:2401.08295},
  year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ConpetExactMatch(evaluate.Metric):
    """Exact match after hf_conpet.metrics.normalize_answer."""

    def _info(self):
        return evaluate_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, several_references=False)

    def _compute(self, predictions, references):
        return {"exact_match": exact_match(predictions, references)}
