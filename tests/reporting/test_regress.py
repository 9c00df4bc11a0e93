"""The regression check catches a planted regression and passes the unchanged code.

The slice is shrunk to one router, the synthetic task and a few steps so the
test takes seconds; the full slice is what CI runs."""

import json

import pytest

from moebench import regress
from moebench.routers.top1 import Top1Router


SHRUNK = ("trainer.max_steps", "trainer.batch_tokens")
TINY = [*(o for o in regress.SLICE["common"] if not o.startswith(SHRUNK)),
        "trainer.max_steps=8", "trainer.batch_tokens=256"]


@pytest.fixture(autouse=True)
def tiny_slice(monkeypatch):
    monkeypatch.setitem(regress.SLICE, "common", TINY)


@pytest.fixture(scope="module")
def baseline_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("baselines") / "regress.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(regress.SLICE, "common", TINY)
        regress.main(["--routers", "top1", "--tasks", "synthetic", "--update", "--baseline", str(path)])
    return path


def check(path, capsys) -> tuple[int, str]:
    """regress's exit code and printed table for the tiny slice against ``path``."""
    try:
        regress.main(["--routers", "top1", "--tasks", "synthetic", "--baseline", str(path)])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().out


def test_unchanged_code_passes_and_a_shifted_baseline_fails(baseline_file, tmp_path, capsys):
    code, table = check(baseline_file, capsys)
    assert code == 0, table
    assert "synthetic/top1  quality" in table and "REGRESSION" not in table

    baseline = json.loads(baseline_file.read_text())
    entry = baseline["runs"]["synthetic/top1"]
    entry["quality"] += 0.05  # the baseline was better than today's code: a regression
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(baseline))
    code, table = check(shifted, capsys)
    assert code == 1
    quality_rows = [line for line in table.splitlines() if "synthetic/top1  quality" in line]
    assert [line.split()[-1] for line in quality_rows] == ["REGRESSION"]


def test_a_broken_router_is_caught(baseline_file, capsys, monkeypatch):
    original = Top1Router.gate_logits

    def collapsed(self, x_TD):  # every token prefers expert 0: drops and imbalance
        logits_TE = original(self, x_TD)
        return logits_TE + 100.0 * (logits_TE.new_tensor(range(logits_TE.shape[-1])) == 0)

    monkeypatch.setattr(Top1Router, "gate_logits", collapsed)
    code, table = check(baseline_file, capsys)
    assert code == 1
    failing = {line.split()[1] for line in table.splitlines() if line.endswith("REGRESSION")}
    assert {"drop_rate", "load_cv"} <= failing


def test_verdicts_respect_direction_tolerance_and_exactness():
    quality, drop, flops = regress.CHECKS[1], regress.CHECKS[2], regress.CHECKS[4]
    assert regress.verdict(quality, 0.80, 0.804, higher_is_better=True) == "ok"
    assert regress.verdict(quality, 0.80, 0.79, higher_is_better=True) == "REGRESSION"
    assert regress.verdict(quality, 2.00, 1.90, higher_is_better=False) == "improved"
    assert regress.verdict(drop, 0.10, 0.20, higher_is_better=True) == "REGRESSION"
    assert regress.verdict(flops, 1000.0, 999.0, higher_is_better=True) == "REGRESSION"
    assert regress.verdict(drop, None, 0.1, higher_is_better=True) == "REGRESSION"


def test_runs_missing_from_a_full_slice_fail_and_new_ones_pass():
    row = {"status": "completed", "quality": 1.0, "drop_rate": 0.0, "load_cv": 0.0,
           "flops_per_token": 1.0, "higher_is_better": True}
    rows = regress.compare({"t/gone": row}, {"t/new": row}, full_slice=True)
    assert {(r["run"], r["verdict"]) for r in rows} == {("t/gone", "MISSING"), ("t/new", "new")}
    assert regress.failed(rows) and not regress.failed(regress.compare({}, {"t/new": row}, False))


@pytest.mark.parametrize("args, message", [
    (["--routers", "top9"], "--routers='top9' is not valid; allowed: "),
    (["--tasks", "enwik8"], "--tasks='enwik8' is not valid; allowed: synthetic, shakespeare_char"),
    (["--baseline", "/nonexistent/regress.json"], "no such file; create it with --update"),
])
def test_bad_options_are_clear_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        regress.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        regress.main(["--routers", "top1", "--tasks", "shakespeare_char", "--update",
                      "--baseline", str(tmp_path / "b.json"), "--data-root", str(tmp_path / "no_data")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "task shakespeare_char needs its data set" in err and "MOEBENCH_DATA" in err
