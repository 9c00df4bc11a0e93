"""The per-step training loss, downsampled for the run record.

A curve of one evaluation every few hundred steps shows little of how a run
trained; every step's loss would make a record of a long run large. So the
record keeps the mean training loss over contiguous buckets of
``ceil(max_steps / MAX_POINTS)`` steps: at most MAX_POINTS points whatever the
run's length, the same buckets for every run of one step count (its seeds),
and O(points) memory while training.
"""

from __future__ import annotations

from torch import Tensor

MAX_POINTS = 200


class LossCurve:
    """Mean task loss per bucket of steps. A point holds ``first_step`` and
    ``last_step`` (counted from 1; the last the bucket's last step taken),
    ``steps`` (the steps averaged: skipped NaN/Inf steps are not),
    ``train_tokens`` (trained on by the end of it) and ``train_loss``.

    The bucket's sum stays on the loss's device and is read once the bucket
    closes: a GPU run waits for it once a bucket, not every step."""

    def __init__(self, max_steps: int, max_points: int = MAX_POINTS) -> None:
        self.every = max(1, -(-max_steps // max_points))
        self.points: list[dict] = []
        self._bucket, self._sum, self._count, self._last_step, self._tokens = 0, 0.0, 0, 0, 0

    def add(self, step: int, loss: Tensor, tokens: int) -> None:
        """The task loss of step ``step`` (counted from 1), ``tokens`` trained on so far."""
        bucket = (step - 1) // self.every
        if self._count and bucket != self._bucket:
            self._close()
        self._bucket = bucket
        self._sum = self._sum + loss.detach().float()
        self._count += 1
        self._last_step, self._tokens = step, tokens

    def finish(self) -> list[dict]:
        """The points, the open bucket's included."""
        if self._count:
            self._close()
        return self.points

    def _close(self) -> None:
        self.points.append({"first_step": self._bucket * self.every + 1, "last_step": self._last_step,
                            "steps": self._count, "train_tokens": self._tokens,
                            "train_loss": float(self._sum) / self._count})
        self._sum, self._count = 0.0, 0
