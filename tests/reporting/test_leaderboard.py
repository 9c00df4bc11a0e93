"""The leaderboard: a pure function of the records, byte for byte."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from moebench.commands.leaderboard import LeaderboardCallback, main
from moebench.reporting.leaderboard import build
from moebench.record import REPO_ROOT
from moebench.commands.report import main as report_main
from moebench.reporting.render import mean_and_interval


def read_tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_regenerating_gives_identical_files_in_a_fresh_process(rich_results, rich_reports, tmp_path):
    # Another process with another hash seed: nothing may depend on set order or time.
    out = tmp_path / "reports"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-m", "moebench.commands.leaderboard", "--results", str(rich_results),
                    "--out", str(out)], check=True, cwd=REPO_ROOT, env=env, capture_output=True)
    first = read_tree(rich_reports)
    assert read_tree(out) == first
    assert {"leaderboard.md", "leaderboard.csv", "index.html"} <= set(first)
    assert {"figures/synthetic-quality_vs_flops.svg", "figures/synthetic-expert_load.svg",
            "figures/synthetic-specialization.svg", "figures/shakespeare_char-drop_vs_capacity.svg",
            "figures/shakespeare_char-drop_by_position.svg", "figures/synthetic-quality_curves.svg",
            "figures/synthetic-quality_vs_train_flops.svg", "figures/synthetic-train_loss.svg"} <= set(first)


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


def test_the_oracle_quality_is_a_reference_row_of_its_task(results_dir, make_record, tmp_path):
    records = [make_record(router, seed=seed, oracle_quality=oracle)
               for router in ("top1", "top2") for seed, oracle in ((0, 0.90), (1, 0.92), (2, 0.94))]
    build(results_dir(*records), tmp_path / "reports")
    md = (tmp_path / "reports" / "leaderboard.md").read_text()
    # mean 0.92; t_{0.975,2} * 0.02 / sqrt(3) = 0.0497
    cells, lines = table_rows(md, "synthetic")
    assert cells[-1] == ["| ref", "oracle routing (same model and budget)"]
    assert "| 3 | 0.920 ± 0.050 |" in lines[-1]


def test_each_row_shows_the_training_flops_it_spent_over_the_budget(results_dir, make_record,
                                                                    add_learning_curves, tmp_path):
    # with_learning_curves: 3 x flops_per_token (1 + seed/100) x 60 steps x 512 tokens by the end
    spent = [3 * 1000.0 * (1 + seed / 100) * 60 * 512 for seed in range(3)]
    budgeted = {"trainer": {"max_train_flops": sum(spent) / 3 / 1.02}}  # the mean spends 102%
    records = [add_learning_curves(make_record("top1", seed=seed, config=budgeted)) for seed in range(3)]
    records += [add_learning_curves(make_record("top2", seed=seed)) for seed in range(3)]  # max_steps
    build(results_dir(*records), tmp_path / "reports")
    md = (tmp_path / "reports" / "leaderboard.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| rank |")).split(" | ")
    column = header.index("FLOPs spent / budget")
    cells = {line.split(" | ")[1]: line.split(" | ")[column] for line in md.splitlines()
             if line.startswith("| ") and line.split(" | ")[1] in ("top1", "top2")}
    assert cells == {"top1": "102.0%", "top2": ""}


@pytest.mark.parametrize("task", ["../../escaped", "ABSOLUTE", "a/b"])
def test_a_task_name_cannot_place_files_outside_the_reports(results_dir, make_record, tmp_path, task):
    root = results_dir(make_record())
    bad = {**make_record(seed=1), "task": str(tmp_path / "escaped") if task == "ABSOLUTE" else task}
    (root / "runs" / "bad.json").write_text(json.dumps(bad))
    out = tmp_path / "deep" / "reports"
    build(root, out)
    figures = list(tmp_path.rglob("*.svg"))
    assert figures and all(path.parent == out / "figures" for path in figures)
    assert f"Skipped runs/bad.json: task {bad['task']!r} is not a name" in (out / "leaderboard.md").read_text()


def run_leaderboard(root, out):
    main(["--results", str(root), "--out", str(out)])


def run_report(root, out):
    report_main(["--results", str(root), "--out", str(out)])


@pytest.mark.parametrize("command", [run_leaderboard, run_report])
def test_no_valid_record_is_refused_and_the_reports_kept(results_dir, make_record, tmp_path, capsys, command):
    out = tmp_path / "reports"
    build(results_dir(make_record()), out)
    before = read_tree(out)
    empty = tmp_path / "empty"
    (empty / "runs").mkdir(parents=True)
    (empty / "runs" / "broken.json").write_text("{")
    with pytest.raises(SystemExit) as exit_info:
        command(empty, out)
    assert exit_info.value.code == 2
    assert "at least one valid run record" in capsys.readouterr().err
    assert read_tree(out) == before


@pytest.mark.parametrize("command", [run_leaderboard, run_report])
def test_a_full_disk_leaves_the_old_reports_intact(results_dir, make_record, tmp_path, monkeypatch, command):
    out = tmp_path / "reports"
    root = results_dir(make_record())
    build(root, out)
    before = read_tree(out)
    results_dir(make_record(seed=1, quality=0.7), make_record(task="shakespeare_char"))
    write_text, write_bytes = Path.write_text, Path.write_bytes

    def filling(path, data, *args, **kwargs):
        write = write_text if isinstance(data, str) else write_bytes
        if path.name == "index.html":  # the disk fills up half-way through the page
            write(path, data[:len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write(path, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", filling)
    monkeypatch.setattr(Path, "write_bytes", filling)
    with pytest.raises(OSError, match="No space left"):
        command(root, out)
    assert read_tree(out) == before  # nothing replaced, nothing removed, no staging folder left


def test_a_diverged_run_without_quality_is_counted_not_ranked(results_dir, make_record, tmp_path):
    root = results_dir(make_record(), make_record("top2"))
    diverged = make_record("top2", seed=1, status="diverged")
    diverged["metrics"]["quality"] = None  # as records write a NaN now
    (root / "runs" / "diverged.json").write_text(json.dumps(diverged))
    build(root, tmp_path / "reports")
    md = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "Not ranked: 1 diverged run(s) (top2 seed 1)." in md and "Skipped" not in md
    assert table_rows(md, "synthetic")[0] == [["| 1", "top1"], ["| 1", "top2"]]
