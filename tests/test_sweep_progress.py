"""A sweep's progress and summary (moebench/commands/sweep.py): runs done,
skipped and left as jobs end, one table at the end, in this process and
across joblib's worker processes."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moebench.commands import app
from moebench.commands.sweep import progress_line, summary_table

REPO = Path(__file__).resolve().parent.parent
TINY = ["trainer.max_steps=2", "trainer.eval_batches=1", "task.oracle_baseline=false",
        "trainer.quiet=true", "trainer.num_threads=1"]


@pytest.fixture
def sweep(monkeypatch, tmp_path, capsys, caplog):
    """``sweep(*overrides)``: a ``-m`` sweep in this process (the basic
    launcher); returns what it printed and logged. Hydra's logging setup is undone."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def main(*overrides: str) -> str:
        caplog.clear()
        monkeypatch.setattr(sys, "argv", ["moebench", "-m", *TINY, *overrides,
                                          f"results_dir={tmp_path}/runs",
                                          f"hydra.sweep.dir={tmp_path}/sweep"])
        app.main()
        return capsys.readouterr().out + "\n".join(r.getMessage() for r in caplog.records)

    yield main
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_sweep_counts_its_runs_and_a_resumed_one_its_skips(sweep):
    out = sweep("seed=0,1")
    assert "sweep: 2 runs" in out
    assert "sweep: 1 of 2 runs ended (1 ran, 0 skipped as already completed, 0 failed), 1 left" in out
    table = out[out.index("sweep summary"):].splitlines()
    assert table[1].split() == ["job", "router", "task", "seed", "status", "quality", "metric", "drop",
                                "tok/s"]
    rows = [line.split() for line in table[3:5]]
    assert [r[:5] + r[6:7] for r in rows] == [["0", "top1", "synthetic", "0", "completed", "accuracy"],
                                              ["1", "top1", "synthetic", "1", "completed", "accuracy"]]
    assert all(0 < float(r[5]) <= 1 and r[7].endswith("%") and float(r[8].replace(",", "")) > 0
               for r in rows)
    assert table[5] == "sweep: 2 of 2 runs ended (2 ran, 0 skipped as already completed, 0 failed), 0 left"

    out = sweep("seed=0,1,2")  # resumed, with one seed more
    assert "sweep: 3 of 3 runs ended (1 ran, 2 skipped as already completed, 0 failed), 0 left" in out
    table = out[out.index("sweep summary"):].splitlines()
    assert [line.split()[4] for line in table[3:6]] == ["skipped", "skipped", "completed"]


def test_failed_and_unreported_jobs_are_counted():
    outcomes = {0: {"router": "top1", "task": "ptb", "seed": 0, "status": "completed", "quality": 412.3,
                    "metric": "perplexity", "drop": 0.0125, "tok/s": 18234.5},
                2: {"router": "base", "task": "ptb", "seed": 0, "status": "failed",
                    "error": "RuntimeError: out of memory"}}
    assert progress_line(outcomes, 3) == ("sweep: 2 of 3 runs ended (1 ran, 0 skipped as already "
                                          "completed, 1 failed), 1 left")
    lines = summary_table(outcomes, None).splitlines()
    assert lines[3].split() == ["0", "top1", "ptb", "0", "completed", "412.3", "perplexity", "1.2%", "18,234"]
    assert lines[4].split() == ["2", "base", "ptb", "0", "failed", "-", "-", "-", "-"]
    assert lines[5] == "sweep: 2 runs ended (1 ran, 0 skipped as already completed, 1 failed)"


def test_joblib_workers_report_to_the_sweeps_summary(tmp_path):
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", *TINY,
            f"results_dir={tmp_path}/runs", f"hydra.sweep.dir={tmp_path}/sweep"]
    proc = subprocess.run([sys.executable, "-m", "moebench", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout[proc.stdout.index("sweep summary"):].splitlines()
    assert [line.split()[:5] for line in table[3:5]] == [["0", "top1", "synthetic", "0", "completed"],
                                                        ["1", "top1", "synthetic", "1", "completed"]]
    assert table[5] == "sweep: 2 of 2 runs ended (2 ran, 0 skipped as already completed, 0 failed), 0 left"
