"""``torchrun --nproc_per_node=2 -m moebench moe.expert_parallel=2`` (gloo) trains
as ``python -m moebench moe.expert_parallel=2`` on one process: the same losses
over 20 steps, the same evaluation, routing and communication figures.
k-means is the router with state moved without gradients: its centroids
start at rank 0's picks and move by every process's tokens (Router.finish_step).

Both sweep the routers side by side (tests/distributed/conftest.py). Top-2 is
left to tests/distributed/test_expert_parallel.py: its default second expert
is a random draw, and random draws are each process's own (a second sweep
with ``router.second_policy=all`` would double the test's time), and so is
DeepSeekMoE's bias: its 31 routed experts need ``router.num_shared=0`` to
shard over 2 processes, a key the other routers lack.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

SETTINGS = ["task=synthetic", "model=tiny", "trainer.max_steps=20", "trainer.batch_tokens=256",
            "trainer.eval_batches=1", "trainer.eval_every=1000", "trainer.num_threads=1",
            "trainer.quiet=true", "task.oracle_baseline=false", "moe.expert_parallel=2"]
ROUTERS = ["expert_choice", "hash", "kmeans", "soft", "top1"]
TIMEOUT_S = 90  # about 45 s on a busy 2-core machine
# Measured where the run runs: time, and what only a sharded run has.
NOT_COMPARED = {"train_time_s", "train_tokens_per_s", "expert_parallel"}


def moebench(results: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "moebench", "-m", f"router={','.join(ROUTERS)}", *SETTINGS,
            f"results_dir={results}", f"hydra.sweep.dir={results.parent / 'hydra' / name}"]


def records(results: Path) -> dict[str, dict]:
    return {r["router"]: r for r in (json.loads(p.read_text()) for p in results.glob("*.json"))}


def assert_same(one, two, where: str) -> None:
    if isinstance(one, dict):
        assert one.keys() == two.keys(), where
        for key in one:
            assert_same(one[key], two[key], f"{where}.{key}")
    elif isinstance(one, list):
        assert len(one) == len(two), where
        for i, (a, b) in enumerate(zip(one, two)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(one, float) and not math.isnan(one):
        assert two == pytest.approx(one, rel=1e-4, abs=1e-6), where
    else:
        assert one == two, where


def test_two_processes_train_as_one(tmp_path, run_side_by_side, torchrun_envs):
    one, two = tmp_path / "one_process", tmp_path / "two_processes"
    commands = [(moebench(one, "one"), {})]
    commands += [(moebench(two, f"rank{env['RANK']}"), env) for env in torchrun_envs(2)]
    run_side_by_side(commands, TIMEOUT_S)

    single, sharded = records(one), records(two)
    assert sorted(single) == sorted(sharded) == ROUTERS
    for router, reference in single.items():
        record = sharded[router]
        assert "expert_parallel" not in reference["metrics"]
        figures = record["metrics"]["expert_parallel"]
        assert figures["world_size"] == 2 and figures["backend"] == "gloo"
        assert all(rank["a2a_bytes_sent_per_step"] > 0 for rank in figures["per_rank"])
        metrics = {k: v for k, v in reference["metrics"].items() if k not in NOT_COMPARED}
        assert_same(metrics, {k: record["metrics"][k] for k in metrics}, f"{router}: metrics")
        assert_same(reference["train_loss_curve"], record["train_loss_curve"], f"{router}: train loss")
        assert_same(reference["curves"], record["curves"], f"{router}: curves")
