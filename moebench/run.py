"""One run: validate the config, train, evaluate, write the record, print a summary."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import torch

from moebench.config import RunConfig
from moebench.distributed import init_from_env, rank
from moebench.validation import validate
from moebench.errors import ConfigError
from moebench.interrupt import held_signals, interruption, sigterm_raises
from moebench.origin import command, data_files, utc_now
from moebench.record import (SCHEMA_VERSION, config_hash, environment, find_completed, new_run_id,
                             resolved_config, write_record)
from moebench.record_schema import RunRecord
from moebench.routers.oracle import OracleConfig
from moebench.tasks import TASKS, Task
from moebench.tasks.data import cache_dir
from moebench.tracking import open_tracker
from moebench.tracking.base import NoTracker, Tracker
from moebench.train import TrainResult, resolve_device, resolve_threads, train

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("val_loss", "drop_rate", "no_expert_rate", "load_cv", "load_max_over_mean",
                "load_entropy", "dead_experts", "nmi_cluster", "nmi_token", "flops_per_token",
                "train_flops_per_token", "active_params", "total_params", "train_tokens_per_s",
                "train_time_s", "causal_leak")
PROBE_BYTES = 1 << 16  # a record is a few to a few hundred kB


class RecordNotSaved(RuntimeError):
    """The record could not be written to results_dir; the message says where it is."""


def run(cfg: RunConfig) -> Path | None:
    """Train and evaluate ``cfg``; return the path of its run record.
    Under torchrun (``moe.expert_parallel`` processes, moebench/distributed.py)
    every process trains and rank 0 writes the one record; the others return None.

    A run whose completed record already exists in ``results_dir`` is not
    repeated, so an interrupted sweep resumes where it stopped. Ctrl-C or
    SIGTERM stops the phase in training (pretraining, training, oracle
    baseline) and every later one; the record, status interrupted, names the
    signal and holds what was evaluated (moebench/interrupt.py). A signal
    that arrives while the record is written is raised once it is written.
    """
    validate(cfg)
    world_size = init_from_env(resolve_device(cfg.trainer.device))
    if world_size not in (1, cfg.moe.expert_parallel):
        raise ConfigError("moe.expert_parallel", cfg.moe.expert_parallel,
                          f"{world_size}, the processes torchrun started")
    resolved = resolved_config(cfg)
    digest = config_hash(resolved)
    done = find_completed(cfg.results_dir, digest)
    if done is not None:
        log.info("already completed, skipping: %s", done)
        return done
    check_writable(cfg.results_dir)
    started_at, started = utc_now(), time.monotonic()
    torch.set_num_threads(resolve_threads(cfg.trainer.num_threads))
    env = environment(resolve_device(cfg.trainer.device).type)
    with sigterm_raises():
        task = TASKS.get(cfg.task.name).cls(cfg.task, cfg.data, cfg.seed)
        pretrained, result, oracle = train_phases(cfg, task)
        with held_signals() as held:
            interrupted_by = next((p.interrupted_by for p in (pretrained, result, oracle)
                                   if p is not None and p.interrupted_by), None)
            record = {
                "schema_version": SCHEMA_VERSION,
                "run_id": new_run_id(cfg.router.name, cfg.task.name, cfg.seed, digest),
                "config_hash": digest,
                "status": "interrupted" if interrupted_by else result.status,
                "interrupted_by": interrupted_by,
                "router": cfg.router.name,
                "task": cfg.task.name,
                "seed": cfg.seed,
                "config": resolved,
                "env": env,
                "metrics": run_metrics(task, pretrained, result, oracle),
                "curves": result.curves,
                "train_loss_curve": result.train_loss_curve,
                "started_at": started_at,
                "ended_at": utc_now(),
                "wall_time_s": time.monotonic() - started,
                "command": command(),
                "data_files": data_files(read_tasks(cfg)),
            }
            path = None
            if rank() == 0:  # under expert parallelism one record, rank 0's
                print(summary_table(record))
                path = save(record, cfg)
                print(f"run record: {path}")
            # A missing or mistyped field (a bug) fails here, not in a reader;
            # after saving, so the run's measurements are not lost to it.
            RunRecord.model_validate(record)
    if held:
        raise interruption(held[0])
    return path


def read_tasks(cfg: RunConfig) -> list[str]:
    """The tasks whose data the run reads: its own, and the pretraining task's."""
    pretrain = cfg.transfer.pretrain_task
    return [cfg.task.name] + ([pretrain.name] if pretrain is not None else [])


def interrupted_by(path: Path) -> str | None:
    """The signal that stopped the run recorded at ``path``, if one did."""
    return json.loads(path.read_text()).get("interrupted_by")


def train_phases(cfg: RunConfig, task: Task) -> tuple[TrainResult | None, TrainResult,
                                                      TrainResult | None]:
    """(pretraining, training, oracle baseline), the first and last if configured.
    An interrupted phase stops training: later ones do not train. Every
    phase reports to the run's one tracker (``logger=``, moebench/tracking/)."""
    with closing(open_tracker(cfg) if rank() == 0 else NoTracker()) as tracker:
        pretrained = pretrain(cfg, tracker) if cfg.transfer.pretrain_task is not None else None
        stopped = pretrained is not None and pretrained.interrupted_by is not None
        # The record needs the model's quality on the task: evaluate it as it stands.
        result = train(untrained(cfg) if stopped else cfg, task,
                       init_from=pretrained.model if pretrained else None, tracker=tracker)
        oracle = None
        if getattr(cfg.task, "oracle_baseline", False) and result.status == "completed" and not stopped:
            oracle = train(cfg, task, router_cfg=OracleConfig(k=1), phase="oracle", tracker=tracker)
    return pretrained, result, oracle


def run_metrics(task: Task, pretrained: TrainResult | None, result: TrainResult,
                oracle: TrainResult | None) -> dict:
    """The run's metrics, with the pretraining's and the oracle baseline's."""
    metrics = {"quality_metric": task.quality_metric, "higher_is_better": task.higher_is_better,
               **result.metrics}
    if pretrained is not None:
        metrics.update(pretrain_quality=pretrained.metrics["quality"],
                       pretrain_val_loss=pretrained.metrics["val_loss"],
                       pretrain_steps=pretrained.metrics["steps"])
    if oracle is not None:
        metrics.update(oracle_quality=oracle.metrics["quality"], oracle_steps=oracle.metrics["steps"])
    return metrics


def check_writable(results_dir: str) -> None:
    """Fail before training, not after it, where no record can be written:
    ``results_dir`` is a file, read-only, or on a full disk."""
    try:
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=results_dir) as probe:
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        reason = "a file of that name exists" if isinstance(e, FileExistsError) else e.strerror
        raise ConfigError("results_dir", results_dir, f"a writable directory ({reason})") from None


def save(record: dict, cfg: RunConfig) -> Path:
    """Write ``record`` to ``results_dir``. If that fails after all (the disk
    filled up during training), keep it in the user cache, or failing that on
    stderr, and raise RecordNotSaved naming the place."""
    try:
        return write_record(record, cfg.results_dir)
    except OSError as e:
        reason = f"could not write the run record to {cfg.results_dir} ({e.strerror or e})"
    fallback = cache_dir(cfg.data) / "unsaved-records"
    try:
        kept = write_record(record, fallback)
    except OSError:
        print(json.dumps(record), file=sys.stderr)
        raise RecordNotSaved(f"{reason}, nor to {fallback}; it is printed above") from None
    raise RecordNotSaved(f"{reason}; it was saved as {kept}: move it into {cfg.results_dir}")


def untrained(cfg: RunConfig) -> RunConfig:
    """``cfg`` with no training steps: train() then only evaluates."""
    return replace(cfg, trainer=replace(cfg.trainer, max_steps=0, max_tokens=None,
                                        max_train_flops=None))


def pretrain(cfg: RunConfig, tracker: Tracker) -> TrainResult:
    """The pretraining phase of a transfer run, on ``transfer.pretrain_task``."""
    pre_task_cfg = cfg.transfer.pretrain_task
    # The fine-tuning budget (trainer.max_tokens, max_train_flops) is not the pretraining's.
    pre_cfg = replace(cfg, task=pre_task_cfg,
                      trainer=replace(cfg.trainer, max_steps=cfg.transfer.pretrain_steps, max_tokens=None,
                                      max_train_flops=cfg.transfer.pretrain_train_flops))
    return train(pre_cfg, TASKS.get(pre_task_cfg.name).cls(pre_task_cfg, cfg.data, cfg.seed),
                 phase="pretrain", tracker=tracker)


def summary_table(record: dict) -> str:
    m = record["metrics"]
    status = record["status"]
    if record.get("interrupted_by"):
        status += f" ({record['interrupted_by']})"
    rows = [("status", status), (f"quality ({m['quality_metric']})", m["quality"])]
    if "oracle_quality" in m:
        rows.append(("oracle router quality", m["oracle_quality"]))
    if "pretrain_quality" in m:
        rows.append(("quality before fine-tuning", m["pretrain_quality"]))
    rows += [(key, m[key]) for key in SUMMARY_KEYS if key in m]
    width = max(len(name) for name, _ in rows)
    lines = [f"{record['task']} / {record['router']} / seed {record['seed']}", "-" * (width + 16)]
    for name, value in rows:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<{width}}  {text:>12}")
    return "\n".join(lines)
