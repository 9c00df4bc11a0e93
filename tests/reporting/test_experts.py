"""The expert-count report (Clark et al. 2022, Figure 1) from hand-made
records: every router at every E and the dense model at E = 1 reach the
table and the figure, with the numbers of their seeds."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from moebench.commands.report import main
from moebench.reporting.experts import FILES, experts_figure, experts_summary, experts_table, markdown
from moebench.reporting.ranking import mean_ci
from moebench.results import load_results

TASKS = ("shakespeare_char", "synthetic")
ROUTERS = ("top1", "hash", "sbase", "rl", "base", "deepseek_moe")
EXPERTS = (4, 8, 16, 32, 64)
JITTER = (0.0, 0.01, -0.01)  # per seed
BUDGET = {"max_train_flops": 1e12}
DENSE = {"router": {"name": "dense", "k": 1, "params": "active"}, "moe": {"num_experts": 1}, "trainer": BUDGET}


def quality(task: str, router: str, E: int) -> float:
    """A different mean for every cell: better with E, by router."""
    gain = 0.02 * math.log2(E) + 0.001 * (ROUTERS.index(router) + 1 if router in ROUTERS else 0)
    return 0.5 + gain if task == "synthetic" else 3.0 - gain


@pytest.fixture
def sweep(make_record):
    """The records of both commands of conf/experiment/experts.yaml, 3 seeds."""
    made = []
    for task in TASKS:
        for seed, jitter in enumerate(JITTER):
            made += [make_record(router, task, seed, quality(task, router, E) + jitter,
                                 config={"moe": {"num_experts": E}, "trainer": BUDGET})
                     for router in ROUTERS for E in EXPERTS]
            made.append(make_record("dense", task, seed, quality(task, "dense", 1) + jitter, config=DENSE))
    return made


def folder(root: Path, records: list[dict]) -> Path:
    """``records`` as files under ``root``, as the loader reads them (without
    the fsync of moebench.record, 186 times over)."""
    root.mkdir()
    for made in records:
        (root / f"{made['run_id']}.json").write_text(json.dumps(made))
    return root


def test_the_table_has_every_router_at_every_E_and_dense_at_E_1(tmp_path, sweep):
    runs = load_results(folder(tmp_path / "results", sweep)).runs
    summary = experts_summary(runs)
    text = markdown(summary, runs)
    spread = mean_ci(pd.Series(JITTER))[1]  # every cell's seeds: its mean plus JITTER
    for task in TASKS:
        table = experts_table(summary[summary["task"] == task]).set_index("router")
        assert list(table.columns) == ["seeds", *(f"E = {E}" for E in (1, *EXPERTS))]
        assert list(table.index) == ["dense (active)", *sorted(ROUTERS)]  # dense first, at E = 1
        assert (table["seeds"] == "3").all()
        assert table.loc["dense (active)", "E = 1"].startswith(f"{quality(task, 'dense', 1):.3f} ± {spread:.3f}")
        assert (table.loc["dense (active)", [f"E = {E}" for E in EXPERTS]] == "").all()
        for router in ROUTERS:
            assert table.loc[router, "E = 1"] == ""
            for E in EXPERTS:
                assert table.loc[router, f"E = {E}"] == f"{quality(task, router, E):.3f} ± {spread:.3f}"
        assert f"## {task}\n\n| router | seeds | E = 1 | E = 4 |" in text
    assert "Higher accuracy is better." in text and "Lower bpc is better." in text


def test_the_figure_draws_a_line_per_router_over_E_and_dense_at_E_1(tmp_path, sweep):
    summary = experts_summary(load_results(folder(tmp_path / "results", sweep)).runs)
    axes = experts_figure(summary).axes
    assert [ax.get_title() for ax in axes] == list(TASKS)
    for ax, task in zip(axes, TASKS):
        assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
        drawn = dict(zip(*reversed(ax.get_legend_handles_labels())))
        assert set(drawn) == {*ROUTERS, "dense (active), E = 1"}
        for router in ROUTERS:
            assert list(drawn[router].get_xdata()) == list(EXPERTS)
            assert drawn[router].get_ydata() == pytest.approx([quality(task, router, E) for E in EXPERTS])
        dense = drawn["dense (active), E = 1"]
        assert isinstance(dense, ErrorbarContainer)
        assert list(dense.lines[0].get_xdata()) == [1]
        level = quality(task, "dense", 1)
        assert any(list(line.get_ydata()) == pytest.approx([level, level]) for line in ax.lines)  # across


def test_the_report_regenerates_byte_identical_files_beside_the_leaderboards(sweep, tmp_path):
    root = folder(tmp_path / "results", sweep)
    out = tmp_path / "reports"
    (out / "figures").mkdir(parents=True)
    (out / "leaderboard.md").write_text("the leaderboard")
    (out / "figures" / "synthetic-quality_vs_flops.svg").write_text("<svg/>")
    main(["--experts", "--results", str(root), "--out", str(out)])
    first = {name: (out / name).read_bytes() for name in FILES}
    main(["--experts", "--results", str(root), "--out", str(out)])
    assert {name: (out / name).read_bytes() for name in FILES} == first
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [*FILES, "leaderboard.md", "figures/synthetic-quality_vs_flops.svg"])
    assert (out / "leaderboard.md").read_text() == "the leaderboard"
    csv = first["experts.csv"].decode().splitlines()
    assert len(csv) == 1 + len(TASKS) * (len(ROUTERS) * len(EXPERTS) + 1)


def test_runs_not_completed_are_named_and_left_out(tmp_path, sweep, make_record):
    failed = make_record("top1", "synthetic", 7, float("nan"), "diverged",
                         config={"moe": {"num_experts": 8}, "trainer": BUDGET})
    runs = load_results(folder(tmp_path / "results", [*sweep, failed])).runs
    summary = experts_summary(runs)
    assert "Left out (not completed): top1 at E = 8 seed 7 (diverged)." in markdown(summary, runs)
    assert (summary["seeds"] == 3).all()


def test_two_configs_of_one_router_and_E_are_refused(sweep, make_record, tmp_path, capsys):
    # A second budget's run beside the first: its seeds must not pool with theirs.
    other = make_record("top1", "synthetic", 0, 0.6, config={"moe": {"num_experts": 8},
                                                             "trainer": {"max_train_flops": 2e12}})
    with pytest.raises(SystemExit) as exit_info:
        main(["--experts", "--results", str(folder(tmp_path / "results", [*sweep, other])),
              "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "synthetic: top1, top1 (trainer.max_train_flops=2000000000000.0)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_report_names_the_commits_its_records_came_from(sweep, tmp_path):
    """The E = 1 runs come from a second command, here from a later commit."""
    def from_commit(made: dict) -> dict:
        sha = "b" * 40 if made["router"] == "dense" else "a" * 40
        return {**made, "env": {**made["env"], "git_sha": sha, "git_dirty": made["seed"] == 2 and sha[0] == "b"}}

    out = tmp_path / "reports"
    main(["--experts", "--results", str(folder(tmp_path / "results", [from_commit(r) for r in sweep])),
          "--out", str(out)])
    routed = len(TASKS) * len(JITTER) * len(ROUTERS) * len(EXPERTS)
    assert (f"Records: {routed + 6} (commit aaaaaaa: {routed}, commit bbbbbbb: 6); "
            "2 with uncommitted changes (git_dirty).") in (out / "experts.md").read_text()
