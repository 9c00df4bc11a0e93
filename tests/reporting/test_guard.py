"""Reference rows and the guard: count models in every table, and no ranking
where the dense (active) baseline is not past them."""

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.lines import Line2D

from moebench.config import DataConfig
from moebench.count_models.ngram import Bigram, KneserNeyTrigram, Unigram
from moebench.count_models.references import Reference
from moebench.reporting.leaderboard import build
from moebench.reporting import references
from moebench.reporting.figures import task_figures
from moebench.reporting.guard import apply_guard
from moebench.reporting.ranking import summarize
from moebench.results import load_results
from moebench.tasks.data import SHA256

# What a run record holds that decides its evaluation batches.
EVALUATED = {"trainer": {"batch_tokens": 32, "eval_batches": 2}, "task": {"block_size": 8}}
DENSE = {**EVALUATED, "router": {"name": "dense", "k": 1, "params": "active"}}
# bits per character: the guard's bar is the bigram, the better of unigram and
# bigram, so dense must reach 0.9 * 3.6 = 3.24; the trigram is shown, not a bar
COUNTS = [Reference("unigram (add-one)", {"val": 4.8}, 0.1), Reference("bigram (add-0.1)", {"val": 3.6}, 0.1),
          Reference("trigram (interpolated modified Kneser-Ney)", {"val": 3.0}, 0.1)]


@pytest.fixture
def fixed_references(monkeypatch):
    """Count-model references of known value for every task, and what they were asked for."""
    asked = []

    def fake(task, data, settings, draw):
        asked.append((task, settings, draw))
        return [Reference("majority class", {"val": 0.5}, 0.1)] if task == "synthetic" else COUNTS

    monkeypatch.setattr(references, "task_references", fake)
    return asked


def leaderboard(root: Path, tmp_path: Path) -> str:
    build(root, tmp_path / "reports", DataConfig(root=str(tmp_path / "no-data"), cache_dir=str(tmp_path)))
    return (tmp_path / "reports" / "leaderboard.md").read_text()


def rows(md: str, task: str) -> list[list[str]]:
    """(rank, router, seeds, quality) of each row of one task's table."""
    section = md.split(f"## {task}\n")[1].split("## ")[0]
    return [line.split(" | ")[:4] for line in section.splitlines() if line.startswith("| ")][2:]


def char_records(make_record, dense_bpc: float) -> list[dict]:
    return [record for seed in range(2) for record in (
        make_record("top1", "shakespeare_char", seed, 2.5 + seed / 100, config=EVALUATED),
        make_record("top2", "shakespeare_char", seed, 3.2 + seed / 100, config=EVALUATED),
        make_record("dense", "shakespeare_char", seed, dense_bpc + seed / 100, config=DENSE))]


def test_a_table_not_past_the_count_models_ranks_nothing(results_dir, make_record, tmp_path, fixed_references):
    md = leaderboard(results_dir(*char_records(make_record, dense_bpc=3.3)), tmp_path)
    assert "**Not past the count models: dense (active) scores 3.305 bpc, not 10% better than the best " \
           "of the unigram and bigram, bigram (add-0.1), at 3.600 (3.240 or lower needed). " \
           "Nothing in this table is ranked.**" in md
    assert [row[:2] for row in rows(md, "shakespeare_char")] == [
        ["| unranked", "top1"], ["| unranked", "top2"], ["| ref", "dense (active)"],
        ["| ref", "count model: unigram (add-one)"], ["| ref", "count model: bigram (add-0.1)"],
        ["| ref", "count model: trigram (interpolated modified Kneser-Ney)"]]
    csv = pd.read_csv(tmp_path / "reports" / "leaderboard.csv")
    assert csv["rank"].isna().all() and not csv["past_count_models"].any()
    # scored on the batches the dense runs were evaluated on
    assert fixed_references == [("shakespeare_char", {"block_size": 8},
                                 references.EvalDraw(batch_tokens=32, eval_batches=2))]


def test_a_table_past_the_count_models_is_ranked(results_dir, make_record, tmp_path, fixed_references):
    md = leaderboard(results_dir(*char_records(make_record, dense_bpc=3.2)), tmp_path)
    assert "Past the count models: dense (active) scores 3.205 bpc, 10% better" in md  # worse than the trigram
    assert "unranked" not in md
    assert [row[:2] for row in rows(md, "shakespeare_char")][:2] == [["| 1", "top1"], ["| 2", "top2"]]
    trigram = rows(md, "shakespeare_char")[-1]
    assert trigram == ["| ref", "count model: trigram (interpolated modified Kneser-Ney)", "", "3.000"]


def test_a_router_not_better_than_the_bigram_is_shown_not_ranked(results_dir, make_record, tmp_path,
                                                                   fixed_references):
    made = char_records(make_record, dense_bpc=3.2)
    made += [make_record("rl", "shakespeare_char", seed, 3.6 + seed / 100, config=EVALUATED) for seed in range(2)]
    md = leaderboard(results_dir(*made), tmp_path)
    assert [row[:2] for row in rows(md, "shakespeare_char")][:4] == [
        ["| 1", "top1"], ["| 2", "top2"], ["| below counts", "rl"], ["| ref", "dense (active)"]]
    assert ("Below the count models, so not ranked (not better than bigram (add-0.1)): rl at 3.605."
            in md)
    csv = pd.read_csv(tmp_path / "reports" / "leaderboard.csv").set_index("setup")
    assert csv.loc["rl", "below_count_models"] and pd.isna(csv.loc["rl", "rank"])
    assert not csv.loc["top2", "below_count_models"]
    # it still enters the cross-task summary, last by its mean
    cross = pd.read_csv(tmp_path / "reports" / "cross_task.csv").set_index("setup")
    assert cross.loc["rl", "mean_normalized_rank"] == 1.0
    assert "Not ranked (not past the count models)" not in md  # its table is ranked


@pytest.mark.parametrize("dense_accuracy, ranked", [(0.54, False), (0.56, True)])
def test_where_higher_is_better_dense_must_reach_1_1x(results_dir, make_record, tmp_path, fixed_references,
                                                      dense_accuracy, ranked):
    runs = [make_record("top1", seed=s, quality=0.9, config=EVALUATED) for s in range(2)]
    runs += [make_record("dense", seed=s, quality=dense_accuracy, config=DENSE) for s in range(2)]
    md = leaderboard(results_dir(*runs), tmp_path)
    assert rows(md, "synthetic")[0][0] == ("| 1" if ranked else "| unranked")
    assert rows(md, "synthetic")[-1][:2] == ["| ref", "count model: majority class"]
    assert ("Past" if ranked else "Not past") + " the count models" in md


def test_the_margin_is_a_share_of_the_better_of_unigram_and_bigram(make_record, results_dir):
    summary = summarize(load_results(results_dir(
        make_record("dense", "ptb", quality=901.0, config=DENSE, quality_metric="perplexity"),
        make_record("top1", "ptb", quality=800.0, config=EVALUATED, quality_metric="perplexity"))).runs)
    refs = pd.DataFrame([{"task": "ptb", "router": "count model", "variant": name, "quality_mean": value}
                         for name, value in ((Unigram.name, 1200.0), (Bigram.name, 1000.0),
                                             (KneserNeyTrigram.name, 200.0))])  # not a bar
    dense = summary["variant"] == "dense (active)"
    _, verdicts = apply_guard(summary, refs)
    assert verdicts["ptb"].passed is False  # 901 > 0.9 * 1000
    _, verdicts = apply_guard(summary.assign(quality_mean=summary["quality_mean"].mask(dense, 899.0)), refs)
    assert verdicts["ptb"].passed is True


def test_without_a_dense_run_or_references_the_guard_is_not_checked(results_dir, make_record, tmp_path,
                                                                       fixed_references):
    md = leaderboard(results_dir(make_record("top1", "shakespeare_char", quality=3.5, config=EVALUATED)),
                     tmp_path)
    assert "Not checked against the count models: the table has no dense (active) run." in md
    assert rows(md, "shakespeare_char")[0][:2] == ["| 1", "top1"]


def test_missing_data_is_said_and_nothing_is_guarded(results_dir, make_record, tmp_path):
    md = leaderboard(results_dir(*char_records(make_record, dense_bpc=3.5)), tmp_path)
    assert "Count-model references not computed (" in md and "tinyshakespeare/input.txt: file not found" in md
    assert "Not checked against the count models: the table has no count-model references." in md
    assert [row[0] for row in rows(md, "shakespeare_char")] == ["| 1", "| 2", "| ref"]


def test_reference_rows_come_from_the_data_end_to_end(results_dir, make_record, tmp_path, monkeypatch):
    text = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
    (tmp_path / "data" / "tinyshakespeare").mkdir(parents=True)
    (tmp_path / "data" / "tinyshakespeare" / "input.txt").write_bytes(text)
    monkeypatch.setitem(SHA256, "tinyshakespeare/input.txt", hashlib.sha256(text).hexdigest())
    root = results_dir(*char_records(make_record, dense_bpc=0.5))
    build(root, tmp_path / "reports", DataConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache")))
    md = (tmp_path / "reports" / "leaderboard.md").read_text()
    html = (tmp_path / "reports" / "index.html").read_text()
    for name in ("unigram (add-one)", "bigram (add-0.1)", "trigram (interpolated modified Kneser-Ney)"):
        assert f"| ref | count model: {name} |  | " in md and f"count model: {name}" in html
    assert "the count models: dense (active) scores 0.5050 bpc" in md
    assert "scored on the val batches that the dense (active) runs were evaluated on" in md


def test_references_are_horizontal_lines_in_the_quality_figures(results_dir, make_record, fixed_references,
                                                                    tmp_path):
    runs = char_records(make_record, dense_bpc=2.8)
    results = load_results(results_dir(*runs))
    refs, _ = references.reference_rows(results, DataConfig(root=None, cache_dir=str(tmp_path)))
    figures = {name: fig for name, _, fig in task_figures(results, summarize(results.runs), refs)}
    for name in ("shakespeare_char-quality_curves", "shakespeare_char-quality_vs_flops"):
        (ax,) = figures[name].axes
        flat = {line.get_ydata()[0] for line in ax.get_lines()
                if isinstance(line, Line2D) and len(set(line.get_ydata())) == 1 and line.get_xdata()[0] == 0}
        assert flat >= {4.8, 3.6, 3.0}
        legend = [text.get_text() for text in ax.get_legend().texts]
        assert "count model: trigram (interpolated modified Kneser-Ney)" in legend


def test_a_loss_in_nats_needs_its_perplexity_0_9x(make_record, results_dir):
    """10% of 6.7 nats would ask for half the perplexity: the margin is ln(0.9) nats."""
    summary = summarize(load_results(results_dir(
        make_record("dense", "wikitext2_mlm", quality=6.6, config=DENSE, quality_metric="masked_loss"))).runs)
    refs = pd.DataFrame([{"task": "wikitext2_mlm", "router": "count model", "variant": Unigram.name,
                          "quality_mean": 6.7}])
    at = lambda loss: apply_guard(summary.assign(quality_mean=loss), refs)[1]["wikitext2_mlm"].passed
    assert at(6.7 - 0.11) is True and at(6.7 - 0.10) is False  # ln(0.9) = -0.1054
