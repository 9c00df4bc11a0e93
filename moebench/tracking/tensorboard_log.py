"""``logger=tensorboard``: event files in ``<save_dir>/tensorboard/<run>/``,
so ``tensorboard --logdir <save_dir>/tensorboard`` shows a sweep's runs side
by side; the config as a text summary. Needs ``pip install tensorboard``."""

from __future__ import annotations

import json
from pathlib import Path

from moebench.config import LoggerConfig


class TensorBoardTracker:
    def __init__(self, directory: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when chosen

        self.writer = SummaryWriter(log_dir=str(directory))

    def log_config(self, config: dict) -> None:
        # Markdown: indented by four spaces, the JSON shows as code.
        text = "\n".join("    " + line for line in json.dumps(config, indent=1, sort_keys=True).splitlines())
        self.writer.add_text("config", text)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


def make(cfg: LoggerConfig, run_name: str) -> TensorBoardTracker:
    return TensorBoardTracker(Path(cfg.save_dir) / "tensorboard" / run_name)
