"""The regression check passes the unchanged code on another kernel path, and
catches a planted regression.

The slice is shrunk to one router, the synthetic task and a few steps so the
test takes seconds; the full slice is what CI runs."""

import json
import os
import subprocess
import sys

import pytest

from moebench.commands import regress
from moebench.record import REPO_ROOT
from moebench.routers.top1 import Top1Router

SHRUNK = ("trainer.max_steps", "trainer.batch_tokens")
TINY = [*(o for o in regress.SLICE["common"] if not o.startswith(SHRUNK)),
        "trainer.max_steps=30", "trainer.batch_tokens=512"]
TINY_ARGS = ["--routers", "top1", "--tasks", "synthetic"]


@pytest.fixture(autouse=True)
def tiny_slice(monkeypatch):
    monkeypatch.setitem(regress.SLICE, "common", TINY)


@pytest.fixture(scope="module")
def baseline_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("baselines") / "regress.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(regress.SLICE, "common", TINY)
        regress.main([*TINY_ARGS, "--update", "--seeds", "4", "--baseline", str(path)])
    return path


def check(path, capsys) -> tuple[int, str]:
    """regress's exit code and printed table for the tiny slice against ``path``."""
    try:
        regress.main([*TINY_ARGS, "--baseline", str(path)])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().out


def verdicts(table: str) -> dict[str, str]:
    return {line.split()[1]: line.split()[-1] for line in table.splitlines()[1:]
            if line.startswith("synthetic/top1")}


def test_the_baseline_keeps_every_seed_and_exact_figures_once(baseline_file):
    entry = json.loads(baseline_file.read_text())["runs"]["synthetic/top1"]
    assert len(entry["quality"]) == 4 and len(set(entry["load_cv"])) > 1  # seeds differ
    assert entry["status"] == "completed" and entry["total_params"] > 0
    assert 0 < entry["analytic_flops_per_token"] < min(entry["flops_per_token"])  # experts left out


def test_unchanged_code_passes_and_a_shifted_baseline_fails(baseline_file, tmp_path, capsys):
    code, table = check(baseline_file, capsys)
    assert code == 0, table
    assert set(verdicts(table).values()) == {"ok"}

    baseline = json.loads(baseline_file.read_text())
    quality = baseline["runs"]["synthetic/top1"]["quality"]
    _, half = regress.interval(quality)
    # The baseline was better than today's code (accuracy: higher is better).
    baseline["runs"]["synthetic/top1"]["quality"] = [q + 3 * half for q in quality]
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(baseline))
    code, table = check(shifted, capsys)
    assert code == 1
    assert verdicts(table)["quality"] == "REGRESSION"


def test_another_kernel_path_passes(baseline_file):
    """The same code on torch's scalar kernels (as on a CPU without AVX): the
    figures differ from the baseline's seed 0, and the check still passes."""
    script = (f"from moebench.commands import regress; regress.SLICE['common'] = {TINY!r}; "
              f"regress.main({[*TINY_ARGS, '--baseline', str(baseline_file)]!r})")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "on torch's DEFAULT kernels" in out.stdout
    entry = json.loads(baseline_file.read_text())["runs"]["synthetic/top1"]
    current = {line.split()[1]: float(line.split()[3]) for line in out.stdout.splitlines()
               if line.startswith("synthetic/top1") and line.split()[1] in ("quality", "load_cv")}
    assert current != {m: entry[m][0] for m in current}, "the kernel path changed nothing"


def test_a_broken_router_is_caught(baseline_file, capsys, monkeypatch):
    original = Top1Router.gate_logits

    def collapsed(self, x_TD):  # every token prefers expert 0: drops and imbalance
        logits_TE = original(self, x_TD)
        return logits_TE + 100.0 * (logits_TE.new_tensor(range(logits_TE.shape[-1])) == 0)

    monkeypatch.setattr(Top1Router, "gate_logits", collapsed)
    code, table = check(baseline_file, capsys)
    assert code == 1
    failing = {metric for metric, verdict in verdicts(table).items() if verdict in regress.FAILING}
    assert {"drop_rate", "load_cv", "flops_per_token"} <= failing


def test_a_run_without_a_finite_quality_fails(baseline_file, capsys, monkeypatch):
    from moebench.tasks.synthetic import SyntheticTask

    monkeypatch.setattr(SyntheticTask, "quality", lambda self, loss, accuracy: float("nan"))
    with pytest.raises(SystemExit) as exit_info:
        regress.main([*TINY_ARGS, "--baseline", str(baseline_file)])
    assert exit_info.value.code == 1
    assert "REGRESSION: the slice wrote a record the results loader rejects" in capsys.readouterr().err


def test_ctrl_c_stops_the_whole_slice(tmp_path, monkeypatch):
    started = []

    def interrupted_run(cfg):  # as run() returns a run stopped by Ctrl-C: its record
        started.append(cfg.seed)
        path = tmp_path / f"run{len(started)}.json"
        path.write_text(json.dumps({"status": "interrupted", "interrupted_by": "SIGINT"}))
        return path

    monkeypatch.setattr(regress, "run", interrupted_run)
    with pytest.raises(SystemExit) as exit_info:
        regress.run_slice(["top1"], ["synthetic"], seeds=[0, 1, 2])
    assert exit_info.value.code == 130 and started == [0]


def test_verdicts_follow_the_interval_the_direction_and_exactness():
    status, quality, drop, flops = (next(c for c in regress.CHECKS if c.metric == m)
                                    for m in ("status", "quality", "drop_rate", "flops_per_token"))
    seeds = [0.80, 0.81, 0.79, 0.80]
    mean, half = regress.interval(seeds)
    assert mean == pytest.approx(0.80) and 0.01 < half < 0.2
    assert regress.verdict(quality, seeds, mean + 0.9 * half, higher_is_better=True) == "ok"
    assert regress.verdict(quality, seeds, mean - 1.1 * half, higher_is_better=True) == "REGRESSION"
    assert regress.verdict(quality, seeds, mean - 1.1 * half, higher_is_better=False) == "improved"
    assert regress.verdict(drop, seeds, mean + 1.1 * half, higher_is_better=True) == "REGRESSION"
    assert regress.verdict(flops, seeds, mean - 1.1 * half, higher_is_better=True) == "CHANGED"
    assert regress.verdict(status, "completed", "diverged", higher_is_better=True) == "REGRESSION"
    # Equal over every seed: only rounding is allowed.
    assert regress.verdict(drop, [0.0] * 4, 1e-3, higher_is_better=True) == "REGRESSION"
    assert regress.verdict(drop, [None] * 4, None, higher_is_better=True) == "ok"
    assert regress.verdict(drop, [None] * 4, 0.1, higher_is_better=True) == "REGRESSION"


def test_runs_missing_from_a_full_slice_fail_and_new_ones_pass():
    row = {"status": "completed", "total_params": 10, "analytic_flops_per_token": 5.0,
           "quality": 1.0, "drop_rate": 0.0, "load_cv": 0.0, "flops_per_token": 1.0,
           "higher_is_better": True}
    base = {**row, **{m: [row[m]] * 3 for m in ("quality", "drop_rate", "load_cv", "flops_per_token")}}
    rows = regress.compare({"t/gone": base}, {"t/new": row}, full_slice=True)
    assert {(r["run"], r["verdict"]) for r in rows} == {("t/gone", "MISSING"), ("t/new", "new")}
    assert regress.failed(rows) and not regress.failed(regress.compare({}, {"t/new": row}, False))


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.update(format=1), "format 1, this moebench reads format 2"),
    (lambda b: b["runs"]["synthetic/top1"].pop("load_cv"), "runs.synthetic/top1 has no load_cv"),
    (lambda b: b["runs"]["synthetic/top1"].update(quality=[0.5]), "expected a list of >= 2 finite"),
    (lambda b: b["runs"]["synthetic/top1"].update(status=["completed"]), "expected one value"),
])
def test_a_malformed_baseline_fails_before_anything_runs(baseline_file, tmp_path, capsys,
                                                        monkeypatch, edit, message):
    baseline = json.loads(baseline_file.read_text())
    edit(baseline)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(baseline))
    monkeypatch.setattr(regress, "run_slice", lambda *a, **k: pytest.fail("the slice ran"))
    with pytest.raises(SystemExit) as exit_info:
        regress.main([*TINY_ARGS, "--baseline", str(bad)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_baseline_nested_too_deep_is_a_clear_error(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(SystemExit) as exit_info:
        regress.main([*TINY_ARGS, "--baseline", str(deep)])
    assert exit_info.value.code == 2 and "is not a usable baseline" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--routers", "top9"], "--routers='top9' is not valid; allowed: "),
    (["--tasks", "enwik8"], "--tasks='enwik8' is not valid; allowed: synthetic, shakespeare_char"),
    (["--baseline", "/nonexistent/regress.json"], "no such file; create it with --update"),
    (["--update", "--seeds", "1"], "--seeds=1 is not valid; allowed: an integer >= 2"),
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


def test_the_check_counts_figures_that_reproduce_the_baseline_exactly():
    base = {"t/r": {"quality": [0.5, 0.6], "drop_rate": [0.0, 0.1], "load_cv": [1.0, 1.1],
                    "flops_per_token": [10.0, 11.0]}}
    current = {"t/r": {"quality": 0.5, "drop_rate": 0.0, "load_cv": 1.01, "flops_per_token": 10.0}}
    assert regress.reproduced(base, current) == (3, 4)
