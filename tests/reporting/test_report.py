"""Reports for a subset: KEY=VALUE[,VALUE...] selections, and clear errors."""

import pytest

from moebench.errors import ConfigError
from moebench.commands.report import main, parse_selection, select
from moebench.results import load_results


def test_selection_matches_names_numbers_and_config_keys(rich_results):
    results = load_results(rich_results)
    picked = select(results, parse_selection(["task=synthetic", "router=top1,dense"]))
    assert sorted(set(picked.runs["variant"])) == ["dense (active)", "dense (total)", "top1"]
    picked = select(results, parse_selection(["config.moe.capacity_factor=1", "seed=0"]))
    assert picked.runs[["task", "seed"]].values.tolist() == [["shakespeare_char", 0]]
    assert set(picked.curves["run_id"]) == set(picked.runs["run_id"])


@pytest.mark.parametrize("args, message", [
    (["router=top9"], "router='top9' is not valid; allowed: dense, hash, top1, top2"),
    (["colour=red"], "colour='red' is not valid; allowed: task, router"),
    (["router"], "selection='router' is not valid; allowed: KEY=VALUE"),
    (["seed=one"], "seed='one' is not valid; allowed: 0, 1, 2, 7"),
    (["task=synthetic", "config.moe.capacity_factor=0.5"], "matches at least one run"),
])
def test_bad_selections_name_key_value_and_allowed_values(rich_results, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--results", str(rich_results), "--out", str(tmp_path / "report")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_report_writes_the_selected_runs_only(rich_results, tmp_path):
    main(["task=synthetic", "router=top1,top2", "--results", str(rich_results), "--out", str(tmp_path / "r")])
    md = (tmp_path / "r" / "leaderboard.md").read_text()
    assert md.startswith("# moebench report: task=synthetic router=top1,top2")
    assert "| top2 |" in md and "hash" not in md and "shakespeare_char" not in md
    assert (tmp_path / "r" / "figures" / "synthetic-quality_vs_flops.svg").exists()


def test_parse_selection_collects_repeated_keys():
    assert parse_selection(["router=a", "router=b,c"]) == {"router": ["a", "b", "c"]}
    with pytest.raises(ConfigError):
        parse_selection(["=x"])
