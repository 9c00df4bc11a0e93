"""``logger=csv``: ``<save_dir>/csv/<run>/metrics.csv`` and ``config.json``.

One row per metric (step, name, value, wall_time), so a run's file keeps
one header whatever its phases log; ``pandas.read_csv(path).pivot_table(
index="step", columns="name", values="value")`` gives one column a metric.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from moebench.config import LoggerConfig


class CSVTracker:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.file = open(directory / "metrics.csv", "w", newline="")
        self.rows = csv.writer(self.file)
        self.rows.writerow(["step", "name", "value", "wall_time"])

    def log_config(self, config: dict) -> None:
        (self.directory / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        self.rows.writerows([step, name, value, now] for name, value in metrics.items())
        self.file.flush()  # readable while the run trains

    def close(self) -> None:
        self.file.close()


def make(cfg: LoggerConfig, run_name: str) -> CSVTracker:
    return CSVTracker(Path(cfg.save_dir) / "csv" / run_name)
