"""moebench.commands.bench_train: the record's structure and its ratios, on a tiny smoke run.

No timing is asserted: speed targets live in the committed JSON it writes.
"""

from __future__ import annotations

import json

import pytest

from moebench.commands.bench_train import main, markdown

SMOKE = ["--tasks", "synthetic", "--routers", "top1,top2", "--grouping", "position",
         "--repeats", "1", "--warmup", "1", "--batch-tokens", "64", "--threads", "1"]


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> dict:
    """The record of one smoke run."""
    out = tmp_path_factory.mktemp("bench") / "train_step.json"
    main([*SMOKE, "--out", str(out)])
    return json.loads(out.read_text())


def test_record_has_every_setup_and_its_figures(record):
    assert record["device_type"] == "cpu" and record["cpu_threads"] == 1
    assert record["arguments"]["routers"] == ["top1", "top2"]
    setups = [(e["task"], e["router"], e["grouping"]) for e in record["results"]]
    # the dense baseline has no routing groups: timed once
    assert setups == [("synthetic", "dense", "all"), ("synthetic", "top1", "all"),
                      ("synthetic", "top1", "position"), ("synthetic", "top2", "all"),
                      ("synthetic", "top2", "position")]
    for e in record["results"]:
        assert len(e["step_s_each"]) == 1
        assert e["step_s_min"] <= e["step_s_median"] <= e["step_s_max"]
        assert e["tokens_per_s_median"] == e["tokens_per_step"] / e["step_s_median"]
        assert e["train_flops_per_token"] > 0
        want = 3 * e["train_flops_per_token"] * e["tokens_per_s_median"]
        assert e["flop_per_s"] == pytest.approx(want)
        assert f"router={e['router']}" in e["overrides"] and "model=tiny" in e["overrides"]
    dense = record["results"][0]
    assert "router.params=active" in dense["overrides"]


def test_ratios_are_to_dense_and_to_the_ungrouped_step(record):
    by_key = {(e["router"], e["grouping"]): e for e in record["results"]}
    dense = by_key["dense", "all"]
    assert dense["tokens_per_s_vs_dense"] == 1.0 and dense["flop_per_s_vs_dense"] == 1.0
    for e in record["results"]:
        assert e["tokens_per_s_vs_dense"] == e["tokens_per_s_median"] / dense["tokens_per_s_median"]
        assert e["flop_per_s_vs_dense"] == e["flop_per_s"] / dense["flop_per_s"]
        if e["grouping"] == "position":
            ungrouped = by_key[e["router"], "all"]
            assert e["step_s_vs_all"] == e["step_s_median"] / ungrouped["step_s_median"]
        else:
            assert "step_s_vs_all" not in e


def test_markdown_table_has_a_row_per_setup(record):
    lines = markdown(record).splitlines()
    assert "| router | synthetic |" in lines
    rows = [line.split(" | ")[0] for line in lines if line.startswith("| ") and "---" not in line]
    assert rows == ["| router", "| dense (active)", "| top1", "| top1, position groups", "| top2",
                    "| top2, position groups"]


@pytest.mark.parametrize("option, value, message", [
    ("--repeats", "0", "--repeats=0 is not valid; allowed: an integer >= 1"),
    ("--warmup", "-1", "--warmup=-1 is not valid; allowed: an integer >= 0"),
    ("--threads", "0", "--threads=0 is not valid; allowed: an integer >= 1"),
    ("--batch-tokens", "0", "--batch-tokens=0 is not valid; allowed: an integer >= 1"),
    ("--routers", "top1,oracle", "--routers='oracle' is not valid; allowed: base, "),
    ("--tasks", "nope", "--tasks='nope' is not valid; allowed: enwik8, "),
])
def test_bad_option_is_one_line_and_exit_2(capsys, tmp_path, option, value, message):
    with pytest.raises(SystemExit) as stop:
        main([option, value, "--out", str(tmp_path / "x.json")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"moebench: error: {message}") and "\n" not in err
    assert not (tmp_path / "x.json").exists()


def test_batch_too_small_for_a_causal_task_names_the_setting(capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        main(["--tasks", "shakespeare_char", "--batch-tokens", "64", "--out", str(tmp_path / "x.json")])
    assert stop.value.code == 2
    assert "trainer.batch_tokens=64 must hold two sequences" in capsys.readouterr().err
