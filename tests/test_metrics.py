"""Continual-learning metrics, exact match, and the offline `evaluate` module."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_conpet.metrics import (
    EXACT_MATCH_MODULE_PATH,
    SUMMARY_KEYS,
    ContinualMetrics,
    average_performance,
    backward_transfer,
    exact_match,
    forgetting_drops,
    forgetting_rate,
    forward_transfer,
    load_exact_match,
    normalize_answer,
    selector_accuracy,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def lower_triangular(draw, min_tasks=1, max_tasks=6):
    """a[j][i] for i <= j, None above the diagonal (not trained yet)."""
    count = draw(st.integers(min_tasks, max_tasks))
    return [[draw(scores) if i <= j else None for i in range(count)] for j in range(count)]


@st.composite
def no_forgetting(draw, min_tasks=2, max_tasks=6):
    """Each task keeps exactly the score it had right after its own training."""
    finals = draw(st.lists(scores, min_size=min_tasks, max_size=max_tasks))
    count = len(finals)
    return [[finals[i] if i <= j else None for i in range(count)] for j in range(count)]


# --------------------------------------------------------------------------- hand-computed


HAND_3X3 = [
    [0.8, None, None],
    [0.6, 0.7, None],
    [0.5, 0.6, 0.45],
]


def test_hand_computed_3x3():
    # AP = (0.5 + 0.6 + 0.45) / 3
    assert average_performance(HAND_3X3) == pytest.approx(1.55 / 3)
    # F.Ra: task 0: max(0.8, 0.6) - 0.5 = 0.3; task 1: max(0.7) - 0.6 = 0.1 -> 0.2
    assert forgetting_rate(HAND_3X3) == pytest.approx(0.2)
    assert forgetting_drops(HAND_3X3) == pytest.approx([0.3, 0.1])
    assert forgetting_drops(HAND_3X3[:1]) == []
    # BWT: (0.5 - 0.8 + 0.6 - 0.7) / 2
    assert backward_transfer(HAND_3X3) == pytest.approx(-0.2)
    # FWT: (0.8 - 0.9 + 0.7 - 0.6 + 0.45 - 0.45) / 3
    assert forward_transfer(HAND_3X3, [0.9, 0.6, 0.45]) == pytest.approx(0.0)
    assert forward_transfer(HAND_3X3, [0.7, 0.7, 0.3]) == pytest.approx((0.1 + 0.0 + 0.15) / 3)
    assert forward_transfer(HAND_3X3) is None


def test_forgetting_max_starts_at_the_task_own_row():
    # Task 1 scored 0.9 before it was trained (row 0, zero-shot): that must not count as its best.
    matrix = [[0.5, 0.9], [0.5, 0.4]]
    assert forgetting_rate(matrix) == pytest.approx(0.0)
    # ...and the best may come after the task's own row: task 0 peaks at row 1.
    matrix = [[0.4, None, None], [0.9, 0.5, None], [0.6, 0.5, 0.5]]
    assert forgetting_rate(matrix) == pytest.approx(((0.9 - 0.6) + (0.5 - 0.5)) / 2)


def test_single_task_edge_case_is_undefined_not_zero():
    assert average_performance([[0.7]]) == pytest.approx(0.7)
    assert forgetting_rate([[0.7]]) is None
    assert backward_transfer([[0.7]]) is None
    assert forward_transfer([[0.7]], [0.5]) == pytest.approx(0.2)


def test_rows_may_be_ragged_lower_triangle():
    ragged = [[0.8], [0.6, 0.7], [0.5, 0.6, 0.45]]
    assert forgetting_rate(ragged) == pytest.approx(forgetting_rate(HAND_3X3))


@pytest.mark.parametrize(
    "matrix, message",
    [
        ([], "no rows"),
        ([[0.5], [None, 0.5]], r"a\[1\]\[0\] is missing"),
        ([[0.5], [0.5]], "needs at least 2"),
        ([[1.5]], "not a fraction"),
        ([[float("nan")]], "not a fraction"),
        ([[-0.1]], "not a fraction"),
    ],
)
def test_invalid_matrices_are_refused(matrix, message):
    with pytest.raises(ValueError, match=message):
        average_performance(matrix)


def test_non_numeric_scores_are_refused():
    with pytest.raises(TypeError):
        average_performance([["0.5"]])
    with pytest.raises(TypeError):
        average_performance([[True]])


def test_forward_transfer_needs_a_baseline_per_trained_task():
    with pytest.raises(ValueError, match="single-task score"):
        forward_transfer(HAND_3X3, [0.5, 0.5])
    with pytest.raises(ValueError, match="missing"):
        forward_transfer(HAND_3X3, [0.5, None, 0.5])


# --------------------------------------------------------------------------- properties


@given(no_forgetting())
def test_no_forgetting_means_zero_forgetting_and_zero_bwt(matrix):
    assert forgetting_rate(matrix) == pytest.approx(0.0, abs=1e-12)
    assert backward_transfer(matrix) == pytest.approx(0.0, abs=1e-12)


@given(lower_triangular(min_tasks=2), st.floats(min_value=0.0, max_value=1.0))
def test_constant_drop_in_last_row_shifts_bwt_and_forgetting_by_exactly_that(matrix, fraction):
    last = len(matrix) - 1
    # the largest drop every old task's final score can take while staying in [0, 1]
    drop = fraction * min(matrix[last][i] for i in range(last))
    dropped = [list(row) for row in matrix]
    for i in range(last):
        dropped[last][i] = matrix[last][i] - drop
    assert backward_transfer(dropped) == pytest.approx(backward_transfer(matrix) - drop, abs=1e-9)
    assert forgetting_rate(dropped) == pytest.approx(forgetting_rate(matrix) + drop, abs=1e-9)
    assert average_performance(dropped) == pytest.approx(
        average_performance(matrix) - drop * last / (last + 1), abs=1e-9
    )


@given(lower_triangular())
def test_average_performance_lies_within_the_last_row(matrix):
    last_row = matrix[-1]
    value = average_performance(matrix)
    assert 0.0 <= value <= 1.0
    assert min(last_row) - 1e-12 <= value <= max(last_row) + 1e-12


@given(lower_triangular(min_tasks=2))
def test_forgetting_bounds(matrix):
    forgetting, transfer = forgetting_rate(matrix), backward_transfer(matrix)
    assert -1.0 <= forgetting <= 1.0
    assert -1.0 <= transfer <= 1.0
    # the best earlier score is at least the score right after training
    assert forgetting >= -transfer - 1e-12


@given(lower_triangular())
def test_fwt_against_own_diagonal_is_zero(matrix):
    diagonal = [matrix[i][i] for i in range(len(matrix))]
    assert forward_transfer(matrix, diagonal) == pytest.approx(0.0, abs=1e-12)


@given(lower_triangular(), st.data())
def test_entries_above_the_diagonal_do_not_matter(matrix, data):
    count = len(matrix)
    filled = [[matrix[j][i] if i <= j else data.draw(scores) for i in range(count)] for j in range(count)]
    for metric in (average_performance, forgetting_rate, backward_transfer):
        assert metric(filled) == metric(matrix)


# --------------------------------------------------------------------------- selector accuracy


def test_selector_accuracy_pools_counts():
    # per-task fractions 1.0 and 0.0 but 90 vs 10 examples: pooled 0.9, not 0.5
    assert selector_accuracy([90, 0], [90, 10]) == pytest.approx(0.9)
    assert selector_accuracy([], []) is None
    assert selector_accuracy([0], [0]) is None


@pytest.mark.parametrize("correct, total", [([3], [2]), ([-1], [2]), ([1, 2], [3])])
def test_selector_accuracy_refuses_impossible_counts(correct, total):
    with pytest.raises(ValueError):
        selector_accuracy(correct, total)


# --------------------------------------------------------------------------- ContinualMetrics


def make_metrics():
    metrics = ContinualMetrics(["sst2", "agnews", "copa"], single_task_scores=[0.9, 0.6, 0.45])
    metrics.add_row([0.8])
    metrics.add_row({"sst2": 0.6, "agnews": 0.7}, selector_counts={"sst2": (9, 10), "agnews": (8, 10)})
    metrics.add_row([0.5, 0.6, 0.45], selector_counts=[(9, 10), (7, 10), (10, 10)])
    return metrics


def test_continual_metrics_summary_matches_the_functions():
    summary = make_metrics().summary()
    assert list(summary)[: len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert summary["AP"] == pytest.approx(average_performance(HAND_3X3))
    assert summary["F.Ra"] == pytest.approx(0.2)
    assert summary["BWT"] == pytest.approx(-0.2)
    assert summary["FWT"] == pytest.approx(0.0)
    assert summary["selector_accuracy"] == pytest.approx(26 / 30)
    assert summary["tasks_seen"] == 3


def test_continual_metrics_partial_stream_and_per_row_selector():
    metrics = make_metrics()
    assert metrics.selector_accuracy(0) is None  # no counts recorded for row 0
    assert metrics.selector_accuracy(1) == pytest.approx(17 / 20)
    partial = ContinualMetrics(["a", "b", "c"], matrix=[[0.5], [0.4, 0.9]])
    summary = partial.summary()
    assert summary["tasks_seen"] == 2
    assert summary["AP"] == pytest.approx(0.65)
    assert summary["FWT"] is None and summary["selector_accuracy"] is None
    empty = ContinualMetrics(["a"]).summary()
    assert empty["AP"] is None and empty["tasks_seen"] == 0


def test_continual_metrics_round_trips_through_json():
    metrics = make_metrics()
    text = json.dumps(metrics.to_dict())
    again = ContinualMetrics.from_dict(json.loads(text))
    assert again == metrics
    assert ContinualMetrics.from_json(metrics.to_json()) == metrics
    assert again.summary() == metrics.summary()


@settings(max_examples=30)
@given(lower_triangular())
def test_continual_metrics_json_round_trip_property(matrix):
    names = [f"task_{k}" for k in range(len(matrix))]
    metrics = ContinualMetrics(names, matrix=matrix)
    assert ContinualMetrics.from_json(metrics.to_json()) == metrics


def test_continual_metrics_validation():
    with pytest.raises(ValueError, match="unique"):
        ContinualMetrics(["a", "a"])
    with pytest.raises(ValueError, match="rows"):
        ContinualMetrics(["a"], matrix=[[0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="missing"):
        ContinualMetrics(["a", "b"], matrix=[[0.5], [None, 0.5]])
    metrics = ContinualMetrics(["a"])
    with pytest.raises(ValueError, match="unknown tasks"):
        metrics.add_row({"b": 0.5})
    metrics.add_row([0.5])
    with pytest.raises(ValueError, match="already"):
        metrics.add_row([0.5])
    with pytest.raises(ValueError, match="format_version"):
        ContinualMetrics.from_dict({"format_version": 99, "task_names": ["a"]})
    with pytest.raises(ValueError, match="correct"):
        ContinualMetrics(["a"], matrix=[[0.5]], selector_counts=[[(5, 4)]])


def test_table_shows_matrix_and_summary():
    table = make_metrics().table()
    lines = table.splitlines()
    assert "sst2" in lines[0] and "agnews" in lines[0] and "selector" in lines[0]
    assert any(line.startswith("single-task") for line in lines)
    assert "80.0" in table and "45.0" in table
    assert "AP 51.7" in table and "F.Ra +20.0" in table and "BWT -20.0" in table
    assert "n/a" in ContinualMetrics(["a"], matrix=[[0.5]]).table()  # F.Ra undefined for T = 1


# --------------------------------------------------------------------------- exact match


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Good", "good"),
        ("  Very   Positive. ", "very positive"),
        ("Science or Technology!", "science or technology"),
        ("entailment\n", "entailment"),
        ("A", "a"),  # articles are NOT removed: "A" is a COPA label
        ("«Good»", "good"),  # Unicode punctuation too
        ("don't", "dont"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@given(st.text())
def test_normalize_answer_is_idempotent(text):
    once = normalize_answer(text)
    assert normalize_answer(once) == once
    assert once == once.strip() and "  " not in once


def test_exact_match():
    assert exact_match(
        ["Good.", "bad", "  very  negative"], ["good", "Good", "very negative"]
    ) == pytest.approx(2 / 3)
    assert exact_match(["B"], [["A", "b"]]) == 1.0
    with pytest.raises(ValueError, match="2 predictions but 1"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        exact_match([], [])
    with pytest.raises(TypeError):
        exact_match("abc", "abc")


@given(st.lists(st.text(), min_size=1, max_size=8))
def test_exact_match_of_references_with_themselves_is_one(texts):
    assert exact_match(texts, texts) == 1.0


@given(st.lists(st.text(alphabet="abcXYZ .,!?-", min_size=1), min_size=1, max_size=8))
def test_exact_match_ignores_case_punctuation_and_spacing(texts):
    shouted = ["  " + text.upper().replace(" ", "   ") + "!" for text in texts]
    assert exact_match(shouted, texts) == 1.0


# --------------------------------------------------------------------------- evaluate module


_NO_NETWORK = textwrap.dedent(
    """
    import socket
    import sys

    def _refuse(*args, **kwargs):
        # libraries may swallow the error and fall back, so also leave a mark to assert on
        sys.stderr.write("NETWORK-ATTEMPT\\n")
        raise OSError("network access attempted during an offline test")

    socket.socket.connect = _refuse
    socket.create_connection = _refuse
    socket.getaddrinfo = _refuse
    """
)


def test_evaluate_module_agrees_with_exact_match(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr("socket.socket.connect", refuse)
    monkeypatch.setattr("socket.create_connection", refuse)
    metric = load_exact_match()
    assert not attempts
    predictions = ["Good.", "bad", "Very positive", "A", "neutral "]
    references = ["good", "Good", "very positive", "B", "Neutral"]
    result = metric.compute(predictions=predictions, references=references)
    assert result == {"exact_match": pytest.approx(exact_match(predictions, references))}
    assert result["exact_match"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("hub_offline", [True, False], ids=["HF_HUB_OFFLINE=1", "online-env"])
def test_evaluate_module_loads_without_network(tmp_path, hub_offline):
    """A fresh interpreter with sockets disabled: loading must not even try the Hub."""
    assert EXACT_MATCH_MODULE_PATH.is_file()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    if hub_offline:
        env["HF_HUB_OFFLINE"] = "1"
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")  # a cold cache: the module is copied anew
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    script = _NO_NETWORK + textwrap.dedent(
        """
        from hf_conpet.metrics import load_exact_match
        metric = load_exact_match()
        print(metric.compute(predictions=["Good!", "x"], references=["good", "y"])["exact_match"])
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "NETWORK-ATTEMPT" not in completed.stderr
    assert math.isclose(float(completed.stdout.strip().splitlines()[-1]), 0.5)
