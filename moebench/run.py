"""One run: validate the config, train, evaluate, write the record, print a summary."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from moebench.config import RunConfig, validate
from moebench.record import (SCHEMA_VERSION, config_hash, environment, find_completed, new_run_id,
                             write_record)
from moebench.routers.oracle import OracleConfig
from moebench.tasks import TASKS
from moebench.train import TrainResult, resolve_device, train

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("val_loss", "drop_rate", "no_expert_rate", "load_cv", "load_max_over_mean",
                "load_entropy", "dead_experts", "nmi_cluster", "nmi_token", "flops_per_token",
                "active_params", "total_params", "train_tokens_per_s", "train_time_s",
                "causal_leak")


def run(cfg: RunConfig) -> Path:
    """Train and evaluate ``cfg``; return the path of its run record.

    A run whose completed record already exists in ``results_dir`` is not
    repeated, so an interrupted sweep resumes where it stopped.
    """
    validate(cfg)
    resolved = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    digest = config_hash(resolved)
    done = find_completed(cfg.results_dir, digest)
    if done is not None:
        log.info("already completed, skipping: %s", done)
        return done
    if cfg.trainer.num_threads is not None:
        torch.set_num_threads(cfg.trainer.num_threads)
    task = TASKS.get(cfg.task.name).cls(cfg.task, cfg.data, cfg.seed)
    pretrained = pretrain(cfg) if cfg.transfer.pretrain_task is not None else None
    result = train(cfg, task, init_from=pretrained.model if pretrained else None)
    metrics = {"quality_metric": task.quality_metric, "higher_is_better": task.higher_is_better,
               **result.metrics}
    if pretrained is not None:
        metrics["pretrain_quality"] = pretrained.metrics["quality"]
        metrics["pretrain_val_loss"] = pretrained.metrics["val_loss"]
    if getattr(cfg.task, "oracle_baseline", False) and result.status == "completed":
        log.info("training the same model with the oracle router (routes by true cluster)")
        oracle = train(cfg, task, router_cfg=OracleConfig(k=1))
        metrics["oracle_quality"] = oracle.metrics["quality"]
    record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": new_run_id(cfg.router.name, cfg.task.name, cfg.seed, digest),
        "config_hash": digest,
        "status": result.status,
        "router": cfg.router.name,
        "task": cfg.task.name,
        "seed": cfg.seed,
        "config": resolved,
        "env": environment(resolve_device(cfg.trainer.device).type),
        "metrics": metrics,
        "curves": result.curves,
    }
    path = write_record(record, cfg.results_dir)
    print(summary_table(record))
    print(f"run record: {path}")
    return path


def pretrain(cfg: RunConfig) -> TrainResult:
    """The pretraining phase of a transfer run, on ``transfer.pretrain_task``."""
    pre_task_cfg = cfg.transfer.pretrain_task
    log.info("pretraining on %s for %d steps", pre_task_cfg.name, cfg.transfer.pretrain_steps)
    pre_cfg = replace(cfg, task=pre_task_cfg,
                      trainer=replace(cfg.trainer, max_steps=cfg.transfer.pretrain_steps))
    return train(pre_cfg, TASKS.get(pre_task_cfg.name).cls(pre_task_cfg, cfg.data, cfg.seed))


def summary_table(record: dict) -> str:
    m = record["metrics"]
    rows = [("status", record["status"]), (f"quality ({m['quality_metric']})", m["quality"])]
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
