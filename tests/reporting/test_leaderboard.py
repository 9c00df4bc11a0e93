"""The leaderboard: a pure function of the records, byte for byte."""

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from moebench.leaderboard import LeaderboardCallback, build, main
from moebench.record import REPO_ROOT
from moebench.reporting.render import mean_and_interval


def read_tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_regenerating_gives_identical_files_in_a_fresh_process(rich_results, rich_reports, tmp_path):
    # Another process with another hash seed: nothing may depend on set order or time.
    out = tmp_path / "reports"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-m", "moebench.leaderboard", "--results", str(rich_results),
                    "--out", str(out)], check=True, cwd=REPO_ROOT, env=env, capture_output=True)
    first = read_tree(rich_reports)
    assert read_tree(out) == first
    assert {"leaderboard.md", "leaderboard.csv", "index.html"} <= set(first)
    assert {"figures/synthetic-quality_vs_flops.svg", "figures/synthetic-expert_load.svg",
            "figures/synthetic-specialization.svg", "figures/shakespeare_char-drop_vs_capacity.svg",
            "figures/shakespeare_char-drop_by_position.svg"} <= set(first)


def table_rows(md, task):
    """The (rank, router) cells and the full lines of one task's table."""
    section = md.split(f"## {task}\n")[1].split("## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")][2:]
    return [line.split(" | ")[:2] for line in lines], lines


def test_markdown_ranks_routers_and_shows_references_and_left_out_runs(rich_reports):
    md = (rich_reports / "leaderboard.md").read_text()
    cells, lines = table_rows(md, "synthetic")
    # top1 and top2 overlap (a tie at rank 1); hash is clearly below; dense rows are references.
    assert cells == [["| 1", "top1"], ["| 1", "top2"], ["| 3", "hash"],
                     ["| ref", "dense (total)"], ["| ref", "dense (active)"]]
    assert "0.800 ± 0.025" in lines[0]  # t_{0.975,2} * 0.01 / sqrt(3) = 0.0248
    assert "Not ranked: 1 diverged run(s) (top2 seed 7)." in md
    assert "overlap" in md  # the tie rule is stated
    assert "Skipped runs/broken.json:" in md
    cells, _ = table_rows(md, "shakespeare_char")  # lower bpc is better
    assert cells == [["| 1", "top1 (moe.capacity_factor=1.25)"], ["| 2", "top1 (moe.capacity_factor=0.5)"],
                     ["| 2", "top1 (moe.capacity_factor=1.0)"]]


def test_skipped_files_are_reported_on_stderr(results_dir, make_record, tmp_path, capsys):
    root = results_dir(make_record())
    (root / "runs" / "broken.json").write_text("{")
    build(root, tmp_path / "reports")
    assert f"skipped {root / 'runs' / 'broken.json'}: " in capsys.readouterr().err


def test_figures_of_results_no_longer_there_are_removed(results_dir, make_record, tmp_path):
    out = tmp_path / "reports"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "old_task-quality_curves.svg").write_text("<svg/>")
    build(results_dir(make_record()), out)
    assert not (out / "figures" / "old_task-quality_curves.svg").exists()
    assert (out / "figures" / "synthetic-quality_curves.svg").exists()


def test_a_missing_results_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--results", str(tmp_path / "nowhere"), "--out", str(tmp_path / "reports")])
    assert exit_info.value.code == 2
    assert "--results=" in capsys.readouterr().err


def test_the_sweep_callback_writes_the_leaderboard(results_dir, make_record, tmp_path):
    results_dir(make_record())  # under tmp_path/results
    config = OmegaConf.create({"hydra": {"runtime": {"cwd": str(tmp_path)}}})
    LeaderboardCallback(results="results", out="reports").on_multirun_end(config=config)
    assert (tmp_path / "reports" / "leaderboard.md").exists()


@pytest.mark.parametrize("mean, ci, shown", [
    (723.9627, 13.9476, "724 ± 14"),  # perplexity
    (3.51264, 0.03861, "3.513 ± 0.039"),  # bits per character
    (3.67271, 0.00371, "3.6727 ± 0.0037"),
    (0.88104, float("nan"), "0.881 ± n/a"),  # one seed
])
def test_quality_is_shown_to_the_precision_of_its_interval(mean, ci, shown):
    assert mean_and_interval(mean, ci) == shown


def test_the_oracle_quality_is_noted_under_its_task(results_dir, make_record, tmp_path):
    records = [make_record(router, seed=seed, oracle_quality=oracle)
               for router in ("top1", "top2") for seed, oracle in ((0, 0.90), (1, 0.92), (2, 0.94))]
    build(results_dir(*records), tmp_path / "reports")
    md = (tmp_path / "reports" / "leaderboard.md").read_text()
    # mean 0.92; t_{0.975,2} * 0.02 / sqrt(3) = 0.0497
    assert "Oracle routing (each token to its true cluster's expert, same model and budget): " \
           "accuracy 0.920 ± 0.050 over 3 seed(s)." in md
