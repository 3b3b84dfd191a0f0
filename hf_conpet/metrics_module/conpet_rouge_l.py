"""ROUGE-L as SuperNI and SAPT compute it, as an `evaluate` module loadable from this path.

`evaluate.load("rouge")` needs the Hub; `hf_conpet.metrics.load_rouge_l()` loads this file
instead, offline. The scoring itself is imported from hf_conpet (one definition of it).
"""

import evaluate

from hf_conpet.scoring import evaluate_metric_info, rouge_l

_DESCRIPTION = (
    "ROUGE-L F-measure of rouge_score's RougeScorer(['rougeL'], use_stemmer=True), the best over each "
    "example's references, averaged over examples (a fraction in [0, 1]; SuperNI reports it x100)."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated answers.
    references (list of list of str): the acceptable answers of each prediction.
Returns:
    rougeL (float): fraction in [0, 1].
Examples:
    >>> metric = hf_conpet.metrics.load_rouge_l()
    >>> metric.compute(predictions=["the cat sat"], references=[["a cat sat down", "the cat sat"]])
    {'rougeL': 1.0}
"""

_CITATION = """\
@inproceedings{wang2022supernaturalinstructions,
  title={Super-NaturalInstructions: Generalization via Declarative Instructions on 1600+ NLP Tasks},
  author={Wang, Yizhong and others},
  booktitle={EMNLP},
  year={2022}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ConpetRougeL(evaluate.Metric):
    """ROUGE-L (stemmed F-measure, best over references), hf_conpet.scoring.rouge_l."""

    def _info(self):
        return evaluate_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, several_references=True)

    def _compute(self, predictions, references):
        return {"rougeL": rouge_l(predictions, references)}
