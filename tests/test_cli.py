"""The command line as a user meets it: the default run and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def moebench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "moebench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_default_run_trains_logs_summarizes_and_writes_a_record(tmp_path):
    proc = moebench(f"results_dir={tmp_path}/runs", f"hydra.run.dir={tmp_path}/out", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    log = proc.stdout + proc.stderr
    assert "step  300/300" in log and "drop" in log and "load cv" in log and "tok/s" in log
    assert "quality (accuracy)" in proc.stdout and "oracle router quality" in proc.stdout
    (record_path,) = (tmp_path / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "completed"
    assert (record["router"], record["task"], record["seed"]) == ("top1", "synthetic", 0)
    m = record["metrics"]
    for key in ("quality", "val_loss", "drop_rate", "no_expert_rate", "load_cv",
                "load_max_over_mean", "load_entropy", "dead_experts", "flops_per_token",
                "active_params", "total_params", "train_tokens_per_s", "nmi_cluster"):
        assert isinstance(m[key], float | int), key
    assert 0 < m["quality"] <= 1 and m["active_params"] < m["total_params"]
    assert record["config"]["trainer"]["max_steps"] == 300
    assert record["curves"][-1]["step"] == 300


@pytest.mark.parametrize("override, key, allowed", [
    ("router=nope", "router", "top1"),
    ("task=nope", "task", "synthetic"),
    ("router.k=9", "router.k", "1..8"),
    ("moe.capacity_factor=lots", "moe.capacity_factor", "float"),
    ("moe.num_experts=0", "moe.num_experts", ">= 1"),
    ("trainer.max_steps=-5", "trainer.max_steps", ">= 1"),
    ("router.nope=1", "router.nope", "balance_coef"),
    ("trainer.max_steps", "trainer.max_steps", "key=value"),
    ("router=top1,nope", "router", "top1"),
])
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, override, key, allowed):
    args = ["-m", override] if "," in override else [override]
    proc = moebench(*args, f"results_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert key in lines[0] and allowed in lines[0]
    assert not (tmp_path / "outputs").exists()  # failed before Hydra started a job
