"""Figures: drawn when the records hold their data, skipped (None) when not."""

import pandas as pd
from matplotlib.figure import Figure

from moebench.reporting.figures import expert_load, heatmap_runs, pareto_front, specialization, task_figures
from moebench.reporting.ranking import summarize
from moebench.results import load_results


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    points = pd.DataFrame({"setup": list("abcde"), "flops_per_token": [1, 2, 2, 3, 4],
                           "quality_mean": [0.5, 0.7, 0.6, 0.65, 0.9]})
    assert pareto_front(points, higher_is_better=True)["setup"].tolist() == ["a", "b", "e"]
    lower = points.assign(quality_mean=-points["quality_mean"])
    assert pareto_front(lower, higher_is_better=False)["setup"].tolist() == ["a", "b", "e"]


def names(results):
    ranked = results.where(results.runs["status"] == "completed")
    figures = task_figures(ranked, summarize(ranked.runs))
    assert all(isinstance(fig, Figure) for _, _, fig in figures)
    return sorted(name for name, _, _ in figures)


def test_every_figure_is_drawn_when_the_records_hold_its_data(rich_results):
    assert names(load_results(rich_results)) == [
        "shakespeare_char-drop_by_position", "shakespeare_char-drop_vs_capacity",
        "shakespeare_char-quality_curves", "shakespeare_char-quality_vs_flops",
        "synthetic-expert_load", "synthetic-quality_curves", "synthetic-quality_vs_flops",
        "synthetic-specialization"]


def test_figures_without_data_are_skipped(results_dir, make_record):
    # Records from before per-expert loads, clusters and positions were recorded;
    # one capacity factor only: no capacity figure.
    root = results_dir(make_record(seed=0), make_record(seed=1, quality=0.7))
    assert names(load_results(root)) == ["synthetic-quality_curves", "synthetic-quality_vs_flops"]


def test_heatmaps_leave_out_setups_with_too_many_experts(results_dir, make_record):
    many = [{"load_E": [1.0] * 100, "cluster_expert": [[1] * 100, [2] * 100]}]
    few = [{"load_E": [1.0, 2.0], "cluster_expert": [[1, 0], [0, 1]]}]
    results = load_results(results_dir(make_record("peer", per_layer=many),
                                       make_record("top1", per_layer=few)))
    assert set(heatmap_runs(results.loads)["setup"]) == {"top1"}
    assert set(heatmap_runs(results.clusters)["setup"]) == {"top1"}
    peer = results.where(results.runs["router"] == "peer")
    assert expert_load(peer.loads) is None and specialization(peer.clusters) is None
