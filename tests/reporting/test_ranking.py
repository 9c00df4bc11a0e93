"""Ranking: Student-t intervals over seeds, ties where intervals overlap,
reference rows shown but not ranked."""

import math

import pandas as pd
import pytest

from moebench.reporting.ranking import mean_ci, overlap, summarize


def runs_of(rows, higher_is_better=True):
    """A runs frame: rows of (setup, router, [qualities over seeds])."""
    return pd.DataFrame([
        {"task": "t", "setup": setup, "router": router, "variant": setup, "seed": seed,
         "run_id": f"{setup}-{seed}",
         "quality_metric": "accuracy", "higher_is_better": higher_is_better, "quality": q,
         "drop_rate": 0.1, "load_cv": 0.2, "load_max_over_mean": 1.5, "flops_per_token": 1e3,
         "active_params": 1e2, "train_tokens_per_s": 1e4}
        for setup, router, qualities in rows for seed, q in enumerate(qualities)])


def test_mean_ci_is_the_student_t_interval():
    mean, half = mean_ci(pd.Series([1.0, 2.0, 3.0]))
    # t_{0.975, 2} = 4.302652729911275; std = 1; n = 3
    assert mean == 2.0 and half == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert math.isnan(mean_ci(pd.Series([1.0]))[1])


def test_overlapping_intervals_tie_and_separated_ones_do_not():
    summary = summarize(runs_of([
        ("a", "a", [0.90, 0.91, 0.92]),
        ("b", "b", [0.89, 0.91, 0.90]),  # overlaps a: shares rank 1
        ("c", "c", [0.50, 0.51, 0.52]),  # far below: rank 3, not 2 (competition ranking)
        ("d", "d", [0.10]),  # one seed: unknown interval, ties with the one above
        ("dense (active)", "dense", [0.99, 0.99, 0.99]),  # reference: listed, not ranked
    ]))
    assert summary["setup"].tolist() == ["a", "b", "c", "d", "dense (active)"]
    assert summary["rank"].tolist()[:4] == [1, 1, 3, 3]
    assert pd.isna(summary["rank"].iloc[4]) and summary["reference"].tolist() == [False] * 4 + [True]
    assert summary["seeds"].tolist() == [3, 3, 3, 1, 3]


def test_ties_do_not_chain():
    summary = summarize(runs_of([
        ("a", "a", [0.90, 0.91, 0.92]),  # 0.91 +- 0.025
        ("b", "b", [0.88, 0.89, 0.90]),  # overlaps a: rank 1
        ("c", "c", [0.85, 0.86, 0.87]),  # overlaps b, but clearly behind a: rank 2, not 1
        ("d", "d", [0.82, 0.83, 0.84]),  # clearly behind a and b, overlaps c: rank 3
    ]))
    assert summary["rank"].tolist() == [1, 1, 2, 3]


def test_a_seed_run_twice_counts_once():
    runs = runs_of([("a", "a", [0.9, 0.8])])
    runs = pd.concat([runs, runs.iloc[[0]]]).assign(run_id=["r1", "r2", "r3"])
    assert summarize(runs)["seeds"].tolist() == [2]


def test_lower_is_better_ranks_the_smallest_first():
    summary = summarize(runs_of([("a", "a", [2.0, 2.01, 2.02]), ("b", "b", [1.0, 1.01, 1.02])],
                                higher_is_better=False))
    assert summary["setup"].tolist() == ["b", "a"] and summary["rank"].tolist() == [1, 2]


def test_overlap_counts_touching_intervals_as_overlapping():
    assert overlap(1.0, 0.5, 2.0, 0.5) and not overlap(1.0, 0.4, 2.0, 0.5)
    assert overlap(1.0, math.nan, 5.0, 0.1)


def test_a_leaky_setup_is_flagged_and_not_ranked():
    runs = runs_of([("fair", "top1", [2.0, 2.01, 2.02]), ("peeks", "expert_choice", [1.0, 1.01, 1.02])],
                   higher_is_better=False)
    runs["causal_leak"] = [0.0, 0.0, 0.0, 0.3, 0.0, 0.0]  # one seed of "peeks" saw the future
    summary = summarize(runs).set_index("setup")
    assert summary.loc["peeks", "leaky"] and pd.isna(summary.loc["peeks", "rank"])
    assert not summary.loc["fair", "leaky"] and summary.loc["fair", "rank"] == 1


def test_dense_baselines_are_references_whatever_their_name():
    summary = summarize(runs_of([("dense_total", "dense_total", [0.9]), ("top1", "top1", [0.5])]))
    assert summary.set_index("setup")["rank"].isna().to_dict() == {"top1": False, "dense_total": True}
