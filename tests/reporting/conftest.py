"""Small hand-made run records: the reporting code is tested on records whose
numbers are known, not on whatever a training run happens to produce."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from moebench.record import SCHEMA_VERSION, write_record

CONFIG = {
    "seed": 0,
    "results_dir": "results/runs",
    "data": {"root": None, "cache_dir": None},
    "model": {"name": "tiny", "d_model": 128},
    "moe": {"num_experts": 4, "capacity_factor": 1.25, "eval_capacity_factor": 2.0},
    "trainer": {"max_steps": 60, "log_every_s": 2.0},
}


def record(router: str = "top1", task: str = "synthetic", seed: int = 0, quality: float = 0.8,
                status: str = "completed", config: dict | None = None, **metrics) -> dict:
    """A valid record; ``config`` entries are merged per section into CONFIG,
    ``metrics`` override or add metrics."""
    merged = copy.deepcopy(CONFIG)
    for section, values in (config or {}).items():
        merged[section] = {**merged.get(section, {}), **values} if isinstance(values, dict) else values
    merged["seed"] = seed
    merged.setdefault("router", {"name": router, "k": 1})
    merged.setdefault("task", {"name": task})
    higher = task == "synthetic"
    made = {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "router": router,
        "task": task,
        "seed": seed,
        "config": merged,
        "env": {"device_type": "cpu"},
        "metrics": {
            "quality_metric": "accuracy" if higher else "bpc",
            "higher_is_better": higher,
            "quality": quality,
            "val_loss": 1.0,
            "drop_rate": 0.1,
            "train_drop_rate": 0.2,
            "load_cv": 0.5,
            "load_max_over_mean": 1.5,
            "flops_per_token": 1000.0,
            "active_params": 100.0,
            "total_params": 400.0,
            "train_tokens_per_s": 5000.0,
            "per_layer": [{"drop_rate": 0.1, "load_cv": 0.5}],
            **metrics,
        },
        "curves": [{"step": 30, "quality": quality - 0.1, "val_loss": 1.2},
                   {"step": 60, "quality": quality, "val_loss": 1.0}],
    }
    digest = hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()[:8]
    return {"run_id": f"{task}-{router}-s{seed}-{digest}", **made}


def with_learning_curves(made: dict, tokens_per_step: int = 512) -> dict:
    """``made`` with the training tokens and FLOPs before each evaluation and
    a training-loss curve of three buckets, as records of trainer.eval_points."""
    per_token = made["metrics"]["flops_per_token"] * (1 + made["seed"] / 100)
    curves = [{**point, "train_tokens": point["step"] * tokens_per_step,
               "train_flops": 3 * per_token * point["step"] * tokens_per_step} for point in made["curves"]]
    losses = [{"first_step": first, "last_step": first + 19, "steps": 20,
               "train_tokens": (first + 19) * tokens_per_step, "train_loss": loss + made["seed"] / 10}
              for first, loss in ((1, 3.0), (21, 2.0), (41, 1.5))]
    return {**made, "curves": curves, "train_loss_curve": losses}


@pytest.fixture
def add_learning_curves():
    """``add_learning_curves(record)``: the record with :func:`with_learning_curves`."""
    return with_learning_curves


@pytest.fixture
def make_record():
    """``make_record(router, task, seed, quality, status, config, **metrics)``: a valid record."""
    return record


def write_records(root: Path, records: list[dict]) -> Path:
    for made in records:
        write_record(made, root / "runs")
    return root


@pytest.fixture
def results_dir(tmp_path: Path):
    """``results_dir(*records)``: writes the records under tmp_path/results/runs."""
    return lambda *records: write_records(tmp_path / "results", list(records))


@pytest.fixture(scope="session")
def rich_results(tmp_path_factory) -> Path:
    """Records that exercise every table row kind and every figure: two tasks,
    seeds, a capacity sweep, both dense baselines, per-expert loads, clusters,
    drop rates by position, a diverged run and a corrupted file."""
    details = {"per_layer": [
        {"load_E": [10.0, 30.0, 20.0, 40.0], "cluster_expert": [[9, 1, 0, 0], [0, 2, 8, 0]]},
        {"load_E": [25.0, 25.0, 25.0, 25.0], "cluster_expert": [[5, 5, 0, 0], [0, 0, 5, 5]]}]}
    made = []
    for seed, jitter in enumerate([0.0, 0.01, -0.01]):
        made += [
            record("top1", seed=seed, quality=0.80 + jitter, **details),
            record("top2", seed=seed, quality=0.79 + jitter, flops_per_token=2000.0, **details),
            record("hash", seed=seed, quality=0.60 + jitter, flops_per_token=900.0, **details),
            record("dense", seed=seed, quality=0.70 + jitter, drop_rate=None,
                   config={"router": {"name": "dense", "k": 1, "params": "active"}}),
            record("dense", seed=seed, quality=0.85 + jitter, flops_per_token=4000.0,
                   config={"router": {"name": "dense", "k": 1, "params": "total"}}),
            record("top1", task="shakespeare_char", seed=seed, quality=2.5 + jitter,
                   drop_rate_by_position=[0.0, 0.1, 0.2, 0.3]),
        ]
        made += [record("top1", task="shakespeare_char", seed=seed, quality=2.6 + jitter,
                        train_drop_rate=0.4 / cf, drop_rate_by_position=[0.1, 0.2, 0.3, 0.4],
                        config={"moe": {"capacity_factor": cf}}) for cf in (0.5, 1.0)]
    made.append(record("top2", seed=7, quality=float("nan"), status="diverged"))
    made = [with_learning_curves(r) if r["task"] == "synthetic" else r for r in made]
    root = write_records(tmp_path_factory.mktemp("rich") / "results", made)
    (root / "runs" / "broken.json").write_text('{"schema_version": 1, "run_id": ')
    return root


@pytest.fixture(scope="session")
def rich_reports(rich_results, tmp_path_factory) -> Path:
    """The leaderboard of ``rich_results``, built once (figures take seconds)."""
    from moebench.reporting.leaderboard import build

    out = tmp_path_factory.mktemp("rich_reports") / "reports"
    build(rich_results, out)
    return out
