"""Learning curves: quality against training tokens and FLOPs, and the
training loss, one line per setup (mean over seeds) in a min-max band, with
the count models as reference lines; records from before them still load."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from moebench.reporting.figures import (
    palette, quality_curves, quality_vs_train_flops, seed_spread, task_figures, train_loss_curves,
)
from moebench.reporting.ranking import summarize
from moebench.reporting.references import COLUMNS
from moebench.results import load_results

# with_learning_curves (conftest): 512 tokens a step; evaluations at steps 30
# and 60 of quality - 0.1 and quality; training FLOPs 3x flops_per_token,
# (1 + seed/100)x; losses 3.0, 2.0, 1.5 (+ seed/10) over steps 1-20, 21-40, 41-60.
TOKENS = 512
QUALITY = {"top1": 0.8, "top2": 0.7}  # seed s: + s/10
FLOPS = {"top1": 1000.0, "top2": 2000.0}


@pytest.fixture
def learning(results_dir, make_record, add_learning_curves):
    return load_results(results_dir(*[
        add_learning_curves(make_record(router, seed=seed, quality=QUALITY[router] + seed / 10,
                                        flops_per_token=FLOPS[router]))
        for router in QUALITY for seed in range(3)]))


def test_the_records_curves_are_loaded(learning):
    losses = learning.train_losses
    top1 = losses[(losses["setup"] == "top1") & (losses["seed"] == 2)]
    assert top1[["first_step", "last_step", "train_tokens", "train_loss"]].values.tolist() == [
        [1, 20, 20 * TOKENS, 3.2], [21, 40, 40 * TOKENS, 2.2], [41, 60, 60 * TOKENS, 1.7]]
    assert {"train_tokens", "train_flops"} <= set(learning.curves.columns)
    assert len(learning.where(learning.runs["seed"] == 0).train_losses) == 2 * 3


def test_seeds_pool_by_point_with_their_mean_min_and_max(learning):
    spread = seed_spread(learning.curves, "train_flops", "quality")
    top2 = spread[spread["setup"] == "top2"]
    assert top2["mean"].tolist() == pytest.approx([0.7, 0.8])  # seeds 0.6, 0.7, 0.8 at step 30
    assert top2["low"].tolist() == pytest.approx([0.6, 0.7])
    assert top2["high"].tolist() == pytest.approx([0.8, 0.9])
    # The seeds' FLOPs differ at one step (1.00x, 1.01x, 1.02x): one point, at their mean.
    assert top2["x"].tolist() == pytest.approx([3 * 2000 * 1.01 * step * TOKENS for step in (30, 60)])


def lines_and_bands(fig):
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    return ax, lines, bands


def band_range(band) -> tuple[float, float]:
    ys = np.concatenate([path.vertices[:, 1] for path in band.get_paths()])
    return float(ys.min()), float(ys.max())


def test_quality_against_tokens_and_flops_with_seed_bands_and_references(learning):
    runs, colors = learning.runs, palette(learning.runs["setup"])
    references = pd.DataFrame([{**dict.fromkeys(COLUMNS), "task": "synthetic",
                                "setup": "count model: majority", "quality_mean": 0.3}], columns=COLUMNS)
    for figure, x in [(quality_curves, [30 * TOKENS, 60 * TOKENS]),
                      (quality_vs_train_flops, [3 * 1000 * 1.01 * s * TOKENS for s in (30, 60)])]:
        ax, lines, bands = lines_and_bands(figure(learning.curves, runs, colors, references))
        assert lines["top1"].get_xdata().tolist() == pytest.approx(x)
        assert lines["top1"].get_ydata().tolist() == pytest.approx([0.8, 0.9])  # mean of 3 seeds
        assert lines["top2"].get_ydata().tolist() == pytest.approx([0.7, 0.8])
        # one band per setup, from the seeds' min to their max
        assert sorted(band_range(b) for b in bands) == [pytest.approx((0.6, 0.9)),
                                                         pytest.approx((0.7, 1.0))]
        flat = [line for line in ax.get_lines() if list(line.get_ydata()) == [0.3, 0.3]]
        assert len(flat) == 1  # the count model's line
        assert [t.get_text() for t in ax.get_legend().texts] == ["top1", "top2", "count model: majority"]


def test_the_training_loss_is_drawn_per_setup_against_tokens(learning):
    fig = train_loss_curves(learning.train_losses, palette(learning.runs["setup"]))
    _, lines, bands = lines_and_bands(fig)
    assert lines["top1"].get_xdata().tolist() == [20 * TOKENS, 40 * TOKENS, 60 * TOKENS]
    assert lines["top1"].get_ydata().tolist() == pytest.approx([3.1, 2.1, 1.6])
    assert len(bands) == 2


def test_records_from_before_the_curves_still_load_and_draw_what_they_hold(results_dir, make_record,
                                                                          add_learning_curves):
    old = make_record()  # curves without tokens or FLOPs, no train_loss_curve
    new = add_learning_curves(make_record(seed=1))
    results = load_results(results_dir(old, new))
    assert results.skipped == () and len(results.runs) == 2
    assert set(results.train_losses["run_id"]) == {new["run_id"]}
    older = results.where(results.runs["run_id"] == old["run_id"])
    assert older.train_losses.empty
    figures = {name: fig for name, _, fig in task_figures(older, summarize(older.runs),
                                                          pd.DataFrame(columns=COLUMNS))}
    assert set(figures) == {"synthetic-quality_curves", "synthetic-quality_vs_flops"}
    (ax,) = figures["synthetic-quality_curves"].axes
    assert ax.get_xlabel() == "training step"  # no tokens recorded: against the step


def test_a_malformed_training_loss_curve_is_skipped_with_its_reason(results_dir, make_record):
    bad = {**make_record(), "train_loss_curve": [{"first_step": 1, "train_loss": 2.0}]}
    results = load_results(results_dir(bad))
    assert results.runs.empty
    assert "train_loss_curve" in dict(results.skipped)[f"runs/{bad['run_id']}.json"]
