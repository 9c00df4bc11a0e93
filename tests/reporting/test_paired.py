"""Statistics that use the design: paired differences to dense (active) and
the best router, the cross-task summary with its bootstrap, the forest plot,
and the records' provenance."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from moebench.config import DataConfig
from moebench.count_models.ngram import Bigram, KneserNeyTrigram, Unigram
from moebench.count_models.references import Reference
from moebench.reporting.leaderboard import build, load
from moebench.reporting import references
from moebench.reporting.crosstask import BOOTSTRAP_REPLICATES, cross_task_summary, seed_weights
from moebench.reporting.figures import paired_figures
from moebench.reporting.paired import AGAINST_BEST, AGAINST_DENSE, paired_differences, verdict
from moebench.reporting.provenance import provenance_line
from moebench.reporting.ranking import overlap, summarize

DENSE = {"router": {"name": "dense", "k": 1, "params": "active"}}
# Seed effects far larger than the routers' differences: only pairing sees them.
SEED_EFFECT = {0: 0.0, 1: 0.2, 2: -0.15, 3: 0.1}
TASKS = {"synthetic": True, "shakespeare_char": False}  # task -> higher is better


def frames(root):
    """The completed runs and their summary, as the leaderboard makes them."""
    results = load(root)
    runs = results.where(results.runs["status"] == "completed").runs
    return runs, summarize(runs)


def against(paired, setup, baseline=AGAINST_DENSE):
    (row,) = paired[(paired["setup"] == setup) & (paired["against"] == baseline)].itertuples()
    return row


def offset_records(make_record, task, offsets, seeds=(0, 1, 2), base=0.6):
    """Per setup of ``offsets`` (router -> quality offset from dense (active)), a
    record per seed at base + seed effect + offset; dense (active) at offset 0."""
    made = [make_record("dense", task, seed, base + SEED_EFFECT[seed], config=DENSE) for seed in seeds]
    made += [make_record(router, task, seed, base + SEED_EFFECT[seed] + offset)
             for router, offset in offsets.items() for seed in seeds]
    return made


@pytest.mark.parametrize("task, higher", TASKS.items())
def test_a_router_better_by_a_constant_has_an_interval_on_its_better_side(results_dir, make_record,
                                                                          task, higher):
    step = 0.05 if higher else -0.05  # the better direction
    runs, summary = frames(results_dir(*offset_records(make_record, task, {"top1": step, "top2": -step})))
    paired = paired_differences(runs, summary)
    better, worse = against(paired, "top1"), against(paired, "top2")
    assert better.seeds == 3 and better.difference_mean == pytest.approx(step)
    mean, half = better.difference_mean, better.difference_ci95
    assert (mean - half > 0) if higher else (mean + half < 0)  # excludes 0, on the better side
    assert better.verdict == "better" and worse.verdict == "worse"
    # against the best router (top1): top2 is 2 steps behind, on the worse side
    behind = against(paired, "top2", AGAINST_BEST)
    assert behind.baseline == "top1" and behind.difference_mean == pytest.approx(-2 * step)
    assert behind.verdict == "worse" and AGAINST_BEST not in set(paired[paired["setup"] == "top1"]["against"])


def test_the_interval_is_students_paired_t(results_dir, make_record):
    differences = {0: 0.02, 1: 0.025, 2: 0.015}
    made = offset_records(make_record, "synthetic", {})
    made += [make_record("top1", seed=s, quality=0.6 + SEED_EFFECT[s] + d) for s, d in differences.items()]
    runs, summary = frames(results_dir(*made))
    row = against(paired_differences(runs, summary), "top1")
    values = np.array(list(differences.values()))
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)  # t_{0.975, n-1} s_d / sqrt(n)
    assert row.difference_mean == pytest.approx(0.02) and row.difference_ci95 == pytest.approx(half)
    assert row.verdict == "better"  # 0.02 - 0.0124 > 0
    # unpaired, the seed effects swamp the difference: the ranking's intervals overlap
    top1, dense = (summary.set_index("setup").loc[s] for s in ("top1", "dense (active)"))
    assert overlap(top1.quality_mean, top1.quality_ci95, dense.quality_mean, dense.quality_ci95)


@pytest.mark.parametrize("mean, half, higher, expected", [
    (0.1, 0.05, True, "better"), (0.1, 0.05, False, "worse"),
    (-0.1, 0.05, True, "worse"), (-0.1, 0.05, False, "better"),
    (0.01, 0.05, True, "no difference"), (0.1, math.nan, True, "no interval (1 paired seed)"),
])
def test_the_verdict_follows_the_metrics_direction(mean, half, higher, expected):
    assert verdict(mean, half, higher) == expected


def test_seeds_only_one_router_ran_are_not_paired(results_dir, make_record):
    made = offset_records(make_record, "synthetic", {"top1": 0.05}, seeds=(0, 1, 2))
    made += [make_record("top1", seed=3, quality=0.0),  # no dense (active) seed 3: an outlier never paired
             make_record("dense", seed=5, quality=0.99, config=DENSE),  # no top1 seed 5
             make_record("top2", seed=0, quality=0.7),  # one seed in common: no interval
             make_record("top3", seed=9, quality=0.7)]  # none in common
    paired = paired_differences(*frames(results_dir(*made)))
    row = against(paired, "top1")
    assert row.seeds == 3 and row.difference_mean == pytest.approx(0.05) and row.verdict == "better"
    single = against(paired, "top2")
    assert single.seeds == 1 and math.isnan(single.difference_ci95)
    assert single.verdict == "no interval (1 paired seed)"
    assert against(paired, "top3").seeds == 0 and against(paired, "top3").verdict == "no paired seeds"


def test_leaky_reference_and_unfinished_runs_are_left_out(results_dir, make_record, tmp_path):
    made = offset_records(make_record, "synthetic", {"top1": 0.05, "top2": 0.02})
    for seed in range(3):
        made += [make_record("hash", seed=seed, quality=0.99, causal_leak=0.5),  # leaky
                 make_record("oracle", seed=seed, quality=0.99),
                 make_record("dense", seed=seed, quality=0.9,
                             config={"router": {"name": "dense", "k": 1, "params": "total"}})]
    made.append(make_record("top1", seed=3, quality=0.0, status="diverged"))
    made.append(make_record("dense", seed=3, quality=0.6 + SEED_EFFECT[3], config=DENSE))
    runs, summary = frames(results_dir(*made))
    paired = paired_differences(runs, summary)
    assert sorted(set(paired["setup"])) == ["top1", "top2"]
    assert against(paired, "top1").seeds == 3  # the diverged seed 3 is not paired
    assert set(paired["baseline"]) == {"dense (active)", "top1"}
    table = cross_task_summary(runs, summary, paired).table
    assert table["setup"].tolist() == ["top1", "top2"]


def test_cross_task_summary_ranks_normalizes_and_counts_wins(results_dir, make_record):
    made = []
    for task, higher in TASKS.items():
        sign = 1 if higher else -1
        # a is best everywhere; b and c swap places between the tasks; c is worse than dense on one
        offsets = {"a": 0.3, "b": 0.1, "c": 0.2} if higher else {"a": 0.3, "b": 0.2, "c": -0.1}
        made += offset_records(make_record, task, {r: sign * o for r, o in offsets.items()})
    made += [make_record("d", "synthetic", seed, 0.5) for seed in range(3)]  # one task only
    runs, summary = frames(results_dir(*made))
    cross = cross_task_summary(runs, summary, paired_differences(runs, summary))
    table = cross.table.set_index("setup")
    assert cross.tasks == ("shakespeare_char", "synthetic") and cross.left_out == ()
    # synthetic: a, c, b, d -> 0, 1/3, 2/3, 1; shakespeare_char: a, b, c -> 0, 0.5, 1
    assert table["mean_normalized_rank"].to_dict() == pytest.approx(
        {"a": 0.0, "b": (2 / 3 + 0.5) / 2, "c": (1 / 3 + 1) / 2, "d": 1.0})
    assert cross.table["setup"].tolist() == ["a", "b", "c", "d"]  # best first
    assert table.loc["a", ["rank_low", "rank_high"]].tolist() == [0.0, 0.0]  # best on every seed
    assert table["tasks"].to_dict() == {"a": 2, "b": 2, "c": 2, "d": 1}
    assert table.loc["c", ["wins_over_dense", "tasks_vs_dense"]].tolist() == [1, 2]
    assert table.loc["a", ["wins_over_dense", "tasks_vs_dense"]].tolist() == [2, 2]


def test_the_bootstrap_resamples_seeds_and_is_deterministic(results_dir, make_record):
    # x and y trade places seed by seed: the bootstrap's interval must cover both orders
    made = [make_record(router, seed=seed, quality=q) for seed in range(4)
            for router, q in (("x", 0.5 + 0.1 * (seed % 2)), ("y", 0.55))]
    runs, summary = frames(results_dir(*made))
    first = cross_task_summary(runs, summary, paired_differences(runs, summary))
    shuffled = runs.sample(frac=1, random_state=1)  # the rows' order must not matter either
    again = cross_task_summary(shuffled, summary, paired_differences(shuffled, summary))
    pd.testing.assert_frame_equal(first.table, again.table)
    low, high = first.table.set_index("setup").loc["x", ["rank_low", "rank_high"]]
    assert (low, high) == (0.0, 1.0)
    weights = seed_weights("synthetic", 4)
    assert weights.shape == (1 + BOOTSTRAP_REPLICATES, 4) and (weights.sum(axis=1) == 4).all()
    assert (weights[0] == 1).all() and np.array_equal(weights, seed_weights("synthetic", 4))
    assert not np.array_equal(weights, seed_weights("ptb", 4))  # each task draws its own


@pytest.fixture
def not_past_the_counts(monkeypatch):
    """Every count model at 3.0 bpc: dense (active) must reach 2.7, whichever the guard compares with."""
    counts = [Reference(model.name, {"val": 3.0}, 0.1) for model in (Unigram, Bigram, KneserNeyTrigram)]
    monkeypatch.setattr(references, "task_references", lambda task, data, settings, draw: counts)


def test_a_table_not_past_the_count_models_keeps_its_differences_marked(results_dir, make_record, tmp_path,
                                                                         not_past_the_counts):
    evaluated = {"trainer": {"batch_tokens": 32, "eval_batches": 2}, "task": {"block_size": 8}}
    made = [make_record(router, "shakespeare_char", seed, 2.8 + offset + SEED_EFFECT[seed],
                        config={**evaluated, **(DENSE if router == "dense" else {})})
            for seed in range(3) for router, offset in (("dense", 0.0), ("top1", -0.05), ("top2", 0.05))]
    out, root = tmp_path / "reports", results_dir(*made)
    build(root, out, DataConfig(root=str(tmp_path / "no-data"), cache_dir=str(tmp_path)))
    paired = pd.read_csv(out / "paired.csv")
    [(_, _, fig)] = paired_figures(paired, load(root).runs)
    assert fig.get_suptitle() == "not ranked: not past the count models"
    assert not paired["ranked"].any() and against(paired, "top1").verdict == "better"
    md = (out / "leaderboard.md").read_text()
    part = md.split("## Paired differences to dense (active)")[1]
    assert "**Not ranked (not past the count models)" in part
    assert "Left out: shakespeare_char (not past the count models)." in md
    assert pd.read_csv(out / "cross_task.csv").empty
    svg = (out / "figures" / "shakespeare_char-paired_differences.svg").read_bytes()
    assert svg.startswith(b"<?xml")


def test_the_forest_plot_shows_each_interval_around_zero(results_dir, make_record):
    runs, summary = frames(results_dir(*offset_records(make_record, "shakespeare_char",
                                                       {"top1": -0.05, "top2": 0.05})))
    [(name, caption, fig)] = paired_figures(paired_differences(runs, summary), runs)
    assert name == "shakespeare_char-paired_differences" and "paired Student-t" in caption
    (ax,) = fig.axes
    assert [label.get_text() for label in ax.get_yticklabels()] == ["top1", "top2"]  # the table's order
    assert ax.get_title(loc="left") == "← better" and ax.get_title(loc="right") == ""  # lower bpc
    assert fig.get_suptitle() == ""  # ranked
    assert any(list(line.get_xdata()) == [0, 0] for line in ax.get_lines())  # the line at 0


def test_the_page_leads_with_provenance_and_which_router(results_dir, make_record, tmp_path):
    made = offset_records(make_record, "synthetic", {"top1": 0.05, "top2": -0.05}, seeds=(0, 1, 2, 3))
    environments = [{"git_sha": "a" * 40, "git_dirty": False}, {"git_sha": "a" * 40, "git_dirty": True},
                    {"git_sha": "a" * 40, "git_dirty": True}, {"git_sha": "b" * 40, "git_dirty": False},
                    {"git_sha": None, "git_dirty": None}]
    for record, env in zip(made, environments):
        record["env"] = {"device_type": "cpu", **env}
    out = tmp_path / "reports"
    build(results_dir(*made), out)
    line = ("Records: 12 (commit aaaaaaa: 3, commit bbbbbbb: 1, no commit recorded: 8); "
            "2 with uncommitted changes (git_dirty), 8 with git_dirty unknown.")
    md = (out / "leaderboard.md").read_text()
    assert md.split("\n")[2] == line
    order = [md.index(heading) for heading in ("## Which router should I use?", "## How the tables are made",
                                               "## synthetic", "## Paired differences to dense (active)")]
    assert order == sorted(order)
    assert "| top1 | 1 | 0.00 [0.00, 0.00] | 1 of 1 |" in md
    assert "| top2 | 1 | 1.00 [1.00, 1.00] | 0 of 1 |" in md
    assert f"{BOOTSTRAP_REPLICATES} bootstrap replicates" in md and "Tasks entered: synthetic." in md
    page = (out / "index.html").read_text()
    assert line in page and "synthetic: paired difference in quality to dense (active)" in page


@pytest.mark.parametrize("dtype", [object, bool])  # bool: every record says (numpy's bools)
def test_provenance_counts_every_commit_most_records_first(dtype):
    runs = pd.DataFrame({"env.git_sha": ["c" * 40, "d" * 40, "d" * 40],
                         "env.git_dirty": pd.Series([True, True, False], dtype=dtype)})
    assert provenance_line(runs) == ("Records: 3 (commit ddddddd: 2, commit ccccccc: 1); "
                                     "2 with uncommitted changes (git_dirty).")


def test_the_leaderboard_writes_the_paired_files(rich_reports):
    files = {path.relative_to(rich_reports).as_posix() for path in rich_reports.rglob("*") if path.is_file()}
    assert {"paired.csv", "cross_task.csv", "figures/synthetic-paired_differences.svg"} <= files
    page = (rich_reports / "index.html").read_text()
    assert "synthetic: paired difference in quality to dense (active)" in page
