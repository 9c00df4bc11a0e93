"""``logger=mlflow``: an MLflow run in experiment ``logger.experiment_name``,
by default in a local file store, ``<save_dir>/mlruns`` (``logger.tracking_uri``
names a server instead); the config as the artifact ``config.json``. Needs
``pip install mlflow-skinny``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from moebench.config import MLflowLoggerConfig


class MLflowTracker:
    def __init__(self, cfg: MLflowLoggerConfig, run_name: str) -> None:
        from mlflow.entities import Metric  # only when chosen: seconds of start-up
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = cfg.tracking_uri or Path(cfg.save_dir, "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store in maintenance and refuses it unless
            # asked; its database store needs SQLAlchemy, which mlflow-skinny lacks.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client, self.metric = MlflowClient(tracking_uri=uri), Metric
        experiment = self.client.get_experiment_by_name(cfg.experiment_name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            try:
                experiment_id = self.client.create_experiment(cfg.experiment_name)
            except MlflowException:  # a parallel job of the sweep created it first
                experiment_id = self.client.get_experiment_by_name(cfg.experiment_name).experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def log_config(self, config: dict) -> None:
        self.client.log_dict(self.run_id, config, "config.json")

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(name, value, now, step)
                                                    for name, value in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def make(cfg: MLflowLoggerConfig, run_name: str) -> MLflowTracker:
    return MLflowTracker(cfg, run_name)
