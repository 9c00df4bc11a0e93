"""What a tracking backend does (:class:`Tracker`), and the one that does nothing."""

from __future__ import annotations

from typing import Protocol

from moebench.config import LoggerConfig


class Tracker(Protocol):
    """A run's metrics, sent to a tracking backend as training goes.

    Metric names are ``train/loss``, ``val/loss``, ...; a phase other than
    the main training prefixes its own (``oracle/train/loss``,
    ``pretrain/val/loss``), whose steps count from 1 again."""

    def log_config(self, config: dict) -> None: ...

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class NoTracker:
    """``logger=none``: nothing is tracked."""

    def log_config(self, config: dict) -> None:
        pass

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def make(cfg: LoggerConfig, run_name: str) -> NoTracker:
    return NoTracker()
