"""The downsampled training loss: bounded length, exact bucket means."""

import pytest
import torch

from moebench.metrics.loss_curve import MAX_POINTS, LossCurve


def curve(max_steps: int, losses: dict[int, float], max_points: int = MAX_POINTS) -> list[dict]:
    made = LossCurve(max_steps, max_points)
    for step, loss in losses.items():
        made.add(step, torch.tensor(loss), tokens=100 * step)
    return made.finish()


def test_each_point_is_the_mean_of_its_bucket_of_steps():
    # 10 steps into at most 4 points: buckets of ceil(10 / 4) = 3 steps, the last one short.
    points = curve(10, {step: float(step) for step in range(1, 11)}, max_points=4)
    assert points == [
        {"first_step": 1, "last_step": 3, "steps": 3, "train_tokens": 300, "train_loss": 2.0},
        {"first_step": 4, "last_step": 6, "steps": 3, "train_tokens": 600, "train_loss": 5.0},
        {"first_step": 7, "last_step": 9, "steps": 3, "train_tokens": 900, "train_loss": 8.0},
        {"first_step": 10, "last_step": 10, "steps": 1, "train_tokens": 1000, "train_loss": 10.0}]


def test_skipped_steps_are_left_out_of_their_buckets_mean():
    # Steps 5 and 6 were skipped (NaN/Inf): bucket 4-6 averages step 4 alone;
    # an interrupted run ends after step 8, in the middle of the third bucket.
    points = curve(10, {1: 1.0, 2: 2.0, 3: 6.0, 4: 0.5, 7: 3.0, 8: 4.0}, max_points=4)
    assert [(p["first_step"], p["last_step"], p["steps"], p["train_loss"]) for p in points] == [
        (1, 3, 3, 3.0), (4, 4, 1, 0.5), (7, 8, 2, 3.5)]


@pytest.mark.parametrize("max_steps, points", [(7, 7), (200, 200), (201, 101), (1000, 200), (1001, 167),
                                               (100_000, 200)])
def test_the_curve_never_exceeds_its_points_however_long_the_run(max_steps, points):
    made = LossCurve(max_steps)
    for step in range(1, max_steps + 1):
        made.add(step, torch.tensor(1.0), tokens=step)
        assert len(made.points) < MAX_POINTS  # closed buckets only: memory O(points)
    assert len(made.finish()) == points
    assert made.points[-1]["last_step"] == max_steps
