"""What a run reports as it trains: progress lines (progress.py) and run
tracking (``logger=``: none, csv, tensorboard, wandb, mlflow; one module a
backend, each importing its package only when chosen)."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from datetime import datetime, timezone


from moebench.config import LoggerConfig, RunConfig, WandbLoggerConfig
from moebench.errors import ConfigError
from moebench.record import config_hash, resolved_config
from moebench.tracking.base import Tracker
from moebench.tracking.wandb_log import WANDB_MODES


@dataclass(frozen=True)
class Backend:
    module: str  # defines make(logger config, run name) -> Tracker
    package: str | None = None  # the import it needs, if any
    pip: str | None = None  # the pip package that provides it


BACKENDS = {
    "none": Backend("moebench.tracking.base"),
    "csv": Backend("moebench.tracking.csv_log"),
    "tensorboard": Backend("moebench.tracking.tensorboard_log", "tensorboard", "tensorboard"),
    "wandb": Backend("moebench.tracking.wandb_log", "wandb", "wandb"),
    "mlflow": Backend("moebench.tracking.mlflow_log", "mlflow", "mlflow-skinny"),
}


def check_logger(logger: LoggerConfig, runs_here: bool = True) -> None:
    """Fail in one line, before training, on a ``logger`` that names no
    backend, a wandb mode wandb does not know, or, where the run executes on
    this machine (``runs_here``), a backend whose package is not installed
    (found without importing it)."""
    if logger.name not in BACKENDS:
        raise ConfigError("logger.name", logger.name, BACKENDS)
    if isinstance(logger, WandbLoggerConfig) and logger.mode not in WANDB_MODES:
        raise ConfigError("logger.mode", logger.mode, WANDB_MODES)
    backend = BACKENDS[logger.name]
    if runs_here and backend.package is not None and importlib.util.find_spec(backend.package) is None:
        usable = [name for name, b in BACKENDS.items()
                  if b.package is None or importlib.util.find_spec(b.package) is not None]
        raise ConfigError("logger", logger.name, f"{', '.join(usable)}; "
                          f"{logger.name} needs `pip install {backend.pip}`")


def open_tracker(cfg: RunConfig) -> Tracker:
    """The run's tracker, its resolved config logged. The run is named as its
    record is, ``<task>-<router>-s<seed>-<config hash>-<UTC time>``."""
    check_logger(cfg.logger)
    config = resolved_config(cfg)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    name = f"{cfg.task.name}-{cfg.router.name}-s{cfg.seed}-{config_hash(config)}-{stamp}"
    tracker = importlib.import_module(BACKENDS[cfg.logger.name].module).make(cfg.logger, name)
    tracker.log_config(config)
    return tracker
