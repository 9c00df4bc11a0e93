"""Communication under expert parallelism in the tables and figures: means
over seeds where records hold it, '—' or no column where they predate it."""

import numpy as np
import pandas as pd
import pytest

from moebench.reporting.figures import quality_vs_rank_load
from moebench.reporting.leaderboard import (
    COMMUNICATION_RULE, NOT_RECORDED, build, communication_notes, display_table,
)
from moebench.reporting.ranking import COMM_METRICS, summarize
from moebench.reporting.render import figure_svg
from moebench.results import load_results

HEADERS = ["all-to-all bytes/token", "remote rows", "max/mean rank load"]
NEW = {"moe": {"comm_ranks": 8}}  # records made since the metrics carry the key
P_NOTE = "Communication columns: P = 8 simulated processes (moe.comm_ranks)."


@pytest.fixture
def measured(make_record):
    """``measured(router, seed, quality, bytes, share, rank_load)``: a record with communication."""
    def made(router, seed, quality, bytes_per_token, share, rank_load):
        return make_record(router, seed=seed, quality=quality, config=NEW,
                           comm_bytes_per_token=bytes_per_token, comm_remote_share=share,
                           comm_rank_load_max_over_mean=rank_load)
    return made


def dense(make_record, seed, config):
    return make_record("dense", seed=seed, quality=0.7, drop_rate=None,
                       config={**config, "router": {"name": "dense", "k": 1, "params": "active"}})


def table_of(root):
    runs = load_results(root).runs
    summary = summarize(runs).set_index("setup", drop=False)
    return runs, summary, display_table(summary).set_index("router")


def test_columns_show_means_over_seeds_beside_drop_rate_and_balance(results_dir, measured, make_record):
    runs, summary, table = table_of(results_dir(
        measured("top1", 0, 0.80, 1000.0, 0.875, 1.2), measured("top1", 1, 0.81, 1400.0, 0.855, 1.4),
        measured("top2", 0, 0.79, 2600.0, 0.880, 1.9), measured("top2", 1, 0.78, 2800.0, 0.870, 2.1),
        dense(make_record, 0, NEW)))
    assert summary.loc["top1", list(COMM_METRICS)].tolist() == pytest.approx([1200.0, 0.865, 1.3])
    assert summary.loc["top2", "comm_rank_load_max_over_mean"] == pytest.approx(2.0)
    assert summary["comm_ranks"].tolist() == [8, 8, 8]
    columns = list(table.columns)
    assert columns[columns.index("max/mean load") + 1:][:4] == [*HEADERS, "FLOPs/token"]
    assert table.loc["top1", HEADERS].tolist() == ["1.2k", "86.5%", "1.3"]
    assert table.loc["top2", HEADERS].tolist() == ["2.7k", "87.5%", "2"]
    # Dense measured nothing to exchange: blank, as its drop rate, not '—'.
    assert table.loc["dense (active)", HEADERS].tolist() == ["", "", ""]
    assert communication_notes(runs) == [P_NOTE]


def test_tables_of_older_records_leave_the_columns_out(results_dir, make_record):
    runs, summary, table = table_of(results_dir(make_record("top1", seed=0), make_record("top2", seed=0),
                                                dense(make_record, 0, {})))
    assert summary[list(COMM_METRICS)].isna().all().all() and summary["comm_ranks"].isna().all()
    assert not set(HEADERS) & set(table.columns)
    assert communication_notes(runs) == []


def test_mixed_records_show_what_was_measured_and_say_what_was_not(results_dir, measured, make_record):
    runs, _, table = table_of(results_dir(
        make_record("hash", seed=0), make_record("hash", seed=1),       # before the metrics
        measured("top1", 0, 0.80, 1000.0, 0.875, 1.2),
        make_record("top1", seed=1, quality=0.81),                      # one seed before them
        dense(make_record, 0, {})))
    assert table.loc["hash", HEADERS].tolist() == [NOT_RECORDED] * 3
    # Old or new, a dense record has nothing to exchange: blank, not '—'.
    assert table.loc["dense (active)", HEADERS].tolist() == ["", "", ""]
    assert table.loc["top1", HEADERS].tolist() == ["1k", "87.5%", "1.2"]  # the one seed that has them
    assert table.loc["top1", "seeds"] == "2"
    assert communication_notes(runs) == [
        P_NOTE, "Communication averaged over the seeds whose records hold it: top1 (1 of 2 seeds)."]


def section(md, task):
    """One task's table and notes in leaderboard.md."""
    return md.split(f"## {task}\n")[1].split("## ")[0]


def test_reports_carry_the_columns_the_notes_and_the_figure(results_dir, measured, make_record, tmp_path):
    root = results_dir(
        measured("top1", 0, 0.80, 1000.0, 0.875, 1.2), measured("top2", 0, 0.79, 2600.0, 0.880, 1.9),
        make_record("top1", task="shakespeare_char", seed=0, quality=2.5))
    out = tmp_path / "reports"
    build(root, out)
    md = (out / "leaderboard.md").read_text()
    synthetic, shakespeare = (section(md, task) for task in ("synthetic", "shakespeare_char"))
    assert "| max/mean load | all-to-all bytes/token | remote rows | max/mean rank load |" in synthetic
    assert P_NOTE in synthetic
    assert "rank load" not in shakespeare and "Communication columns" not in shakespeare
    assert COMMUNICATION_RULE in md
    csv = pd.read_csv(out / "leaderboard.csv").set_index(["task", "setup"])
    assert csv.loc[("synthetic", "top2"), "comm_bytes_per_token"] == 2600.0
    assert csv.loc[("synthetic", "top2"), "comm_ranks"] == 8
    assert pd.isna(csv.loc[("shakespeare_char", "top1"), "comm_remote_share"])
    html = (out / "index.html").read_text()
    assert "<th>max/mean rank load</th>" in html and "synthetic: quality against the per-process load" in html
    figures = sorted(p.name for p in (out / "figures").glob("*rank_load*"))
    assert figures == ["synthetic-quality_vs_rank_load.svg"]  # shakespeare_char's records predate it


def rank_load_figure(root):
    runs = load_results(root).runs
    return quality_vs_rank_load(runs, summarize(runs), {s: (0.2, 0.4, 0.6) for s in runs["setup"]})


def test_the_figure_needs_two_setups_that_recorded_it(results_dir, measured, make_record):
    assert rank_load_figure(results_dir(make_record("top1"), make_record("top2"))) is None
    one = results_dir(measured("top1", 1, 0.80, 1000.0, 0.875, 1.2))
    assert rank_load_figure(one) is None
    two = results_dir(measured("top2", 1, 0.79, 2600.0, 0.880, 1.9))  # the same folder, one more
    assert rank_load_figure(two) is not None


def test_the_figure_places_each_setup_at_its_means_and_is_byte_identical(results_dir, measured):
    root = results_dir(
        measured("top1", 0, 0.80, 1000.0, 0.875, 1.2), measured("top1", 1, 0.82, 1400.0, 0.850, 1.4),
        measured("top2", 0, 0.79, 2600.0, 0.880, 1.9))
    fig = rank_load_figure(root)
    ax = fig.axes[0]
    assert [text.get_text() for text in ax.texts] == ["top1", "top2"]
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), [[1.3, 0.81], [1.9, 0.79]])
    x_bars, y_bars = (bars.get_segments() for bars in ax.containers[0].lines[2])
    np.testing.assert_allclose(x_bars[0], [[1.2, 0.81], [1.4, 0.81]])  # top1: lowest to highest seed
    np.testing.assert_allclose(y_bars[0], [[1.3, 0.80], [1.3, 0.82]])
    assert figure_svg(fig) == figure_svg(rank_load_figure(root))
