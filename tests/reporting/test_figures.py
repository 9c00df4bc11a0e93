"""Figures: drawn when the records hold their data, skipped (None) when not."""

import numpy as np
import pandas as pd
import pytest
import seaborn as sns
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure

from moebench.reporting.figures import (
    expert_load, heatmap, heatmap_runs, pareto_front, specialization, task_figures,
)
from moebench.reporting.ranking import summarize
from moebench.reporting.references import COLUMNS
from moebench.results import load_results


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    points = pd.DataFrame({"setup": list("abcde"), "flops_per_token": [1, 2, 2, 3, 4],
                           "quality_mean": [0.5, 0.7, 0.6, 0.65, 0.9]})
    assert pareto_front(points, higher_is_better=True)["setup"].tolist() == ["a", "b", "e"]
    lower = points.assign(quality_mean=-points["quality_mean"])
    assert pareto_front(lower, higher_is_better=False)["setup"].tolist() == ["a", "b", "e"]


def names(results):
    ranked = results.where(results.runs["status"] == "completed")
    figures = task_figures(ranked, summarize(ranked.runs), pd.DataFrame(columns=COLUMNS))
    assert all(isinstance(fig, Figure) for _, _, fig in figures)
    return sorted(name for name, _, _ in figures)


def test_every_figure_is_drawn_when_the_records_hold_its_data(rich_results):
    assert names(load_results(rich_results)) == [
        "shakespeare_char-drop_by_position", "shakespeare_char-drop_vs_capacity",
        "shakespeare_char-quality_curves", "shakespeare_char-quality_vs_flops",
        "synthetic-expert_load", "synthetic-quality_curves", "synthetic-quality_vs_flops",
        "synthetic-quality_vs_train_flops", "synthetic-specialization", "synthetic-train_loss"]


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


def test_heatmap_labels_are_measured_with_one_renderer_per_figure(results_dir, make_record, monkeypatch):
    # Left to sns.heatmap, each tick label is measured by rendering the figure
    # into a fresh full-size buffer: 12 GB for the committed leaderboard.
    per_layer = [{"load_E": [float(e) for e in range(48)]}] * 2
    results = load_results(results_dir(*[make_record(router, per_layer=per_layer)
                                          for router in ("top1", "top2", "hash", "soft")]))
    made = []
    real_init = RendererAgg.__init__

    def counted(self, *args, **kwargs):
        made.append(args)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(RendererAgg, "__init__", counted)
    assert expert_load(results.loads) is not None
    assert len(made) == 1


# Every label; every other; too many to stand up (horizontal); long x labels (vertical).
@pytest.mark.parametrize("rows, columns, first_column", [(8, 2, 0), (32, 2, 0), (64, 2, 0), (2, 64, 1000)])
def test_heatmap_tick_labels_are_the_ones_seaborn_chooses(rows, columns, first_column):
    matrix = pd.DataFrame(np.arange(rows * columns, dtype=float).reshape(rows, columns),
                          index=pd.RangeIndex(rows, name="expert"),
                          columns=pd.RangeIndex(first_column, first_column + columns, name="MoE layer"))

    def labels(draw):
        fig = Figure(figsize=(3, 4), layout="constrained")
        ax = fig.subplots()
        draw(ax)
        ticks = [(t.get_text(), t.get_position(), t.get_rotation(), t.get_va())
                 for t in ax.get_xticklabels() + ax.get_yticklabels()]
        return ticks, ax.get_xlabel(), ax.get_ylabel()

    ours = labels(lambda ax: heatmap(ax, matrix, RendererAgg(300, 400, 100), cmap="viridis", cbar=False))
    assert ours == labels(lambda ax: sns.heatmap(matrix, ax=ax, cmap="viridis", cbar=False))
