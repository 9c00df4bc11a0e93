"""``logger=wandb``: a Weights & Biases run, offline by default (kept in
``<save_dir>/wandb/``, uploaded later by ``wandb sync``). Needs ``pip install wandb``."""

from __future__ import annotations

from pathlib import Path

from moebench.config import WandbLoggerConfig

WANDB_MODES = ("offline", "online", "disabled")  # logger.mode, checked by tracking.check_logger


class WandbTracker:
    def __init__(self, cfg: WandbLoggerConfig, run_name: str) -> None:
        import wandb  # only when chosen: a second of start-up

        Path(cfg.save_dir).mkdir(parents=True, exist_ok=True)  # else wandb falls back to /tmp
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=run_name,
                              dir=cfg.save_dir, mode=cfg.mode)
        # A phase's steps count from 1 again (oracle/..., pretrain/...): every
        # metric is plotted against its own phase's "step", not wandb's running _step.
        self.run.define_metric("*", step_metric="step")

    def log_config(self, config: dict) -> None:
        self.run.config.update(config)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({**metrics, "step": step})

    def close(self) -> None:
        self.run.finish()


def make(cfg: WandbLoggerConfig, run_name: str) -> WandbTracker:
    return WandbTracker(cfg, run_name)
