"""Sweeps through Hydra's launchers: joblib (local, parallel) and submitit
(Slurm; tested with its local executor), each writing one record per run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = ["trainer.max_steps=5", "trainer.eval_batches=1", "task.oracle_baseline=false",
        "trainer.num_threads=1"]


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_sweep_runs_through_the_launcher(tmp_path, launcher):
    args = ["-m", f"hydra/launcher={launcher}", "seed=0,1", f"results_dir={tmp_path}/runs",
            f"hydra.sweep.dir={tmp_path}/sweep", *TINY]
    if launcher == "submitit_local":
        args.append("hydra.launcher.timeout_min=5")
    proc = subprocess.run([sys.executable, "-m", "moebench", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert sorted(r["seed"] for r in records) == [0, 1]
    assert all(r["status"] == "completed" for r in records)


def test_the_slurm_preset_composes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "moebench", "hydra/launcher=slurm",
                           "hydra.launcher.partition=gpu", "--cfg", "hydra", "-p", "hydra.launcher"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "SlurmLauncher" in proc.stdout and "partition: gpu" in proc.stdout
    assert "gpus_per_node: 1" in proc.stdout
