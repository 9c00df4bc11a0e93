"""trainer.eval_points: that many evaluations evenly spaced over the steps a
budget buys, the last at the end, each with the training tokens and FLOPs
before it; and the record keeps the training loss of every step, downsampled."""

import json
import math

import pytest
import torch

from moebench.config import TrainerConfig
from moebench.errors import ConfigError
from moebench.models.ffn import FFNFactory
from moebench.run import run
from moebench.schedule import evaluations_due, steps_for_budget
from moebench.tasks.synthetic import SyntheticTask
from moebench.train import train

SHORT = ("trainer.batch_tokens=256", "trainer.eval_batches=1", "task.oracle_baseline=false")


@pytest.mark.parametrize("max_steps, eval_points, eval_every, expected", [
    (20, 10, 3, {2, 4, 6, 8, 10, 12, 14, 16, 18}),  # eval_points wins over eval_every
    (10, 3, 100, {4, 7}),  # ceil(10/3), ceil(20/3); the third at the end
    (5, 10, 100, {1, 2, 3, 4}),  # fewer steps than points: every step
    (20, 1, 100, set()),  # the final evaluation only
    (20, None, 7, {7, 14}),  # null: every eval_every steps, as before
])
def test_evaluation_steps(max_steps, eval_points, eval_every, expected):
    t = TrainerConfig(max_steps=max_steps, eval_points=eval_points, eval_every=eval_every)
    after = {k for k in range(1, max_steps + 1) if evaluations_due(k, t) > evaluations_due(k - 1, t)}
    assert after == expected


def test_eval_points_below_one_is_refused(make_config):
    with pytest.raises(ConfigError, match=r"trainer.eval_points=0 is not valid; allowed: null .* >= 1"):
        make_config("trainer.eval_points=0")


def test_a_run_records_its_evaluation_points_and_its_loss_at_every_step(make_config):
    cfg = make_config(*SHORT, "trainer.max_steps=20", "trainer.eval_points=10", "trainer.eval_every=3")
    record = json.loads(run(cfg).read_text())
    curves, m = record["curves"], record["metrics"]
    assert [p["step"] for p in curves] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert [p["train_tokens"] for p in curves] == [256 * p["step"] for p in curves]
    # 3x the forward FLOPs as executed, as the budget counts them; the last point spent the run's
    assert curves[-1]["train_flops"] == pytest.approx(3 * m["train_flops_per_token"] * 20 * 256)
    flops = [p["train_flops"] for p in curves]
    assert all(0 < a < b for a, b in zip(flops, flops[1:]))
    assert curves[-1]["quality"] == m["quality"]
    # 20 steps fit 200 points: one step a point, its task loss as the curves saw it
    losses = record["train_loss_curve"]
    assert [(p["first_step"], p["last_step"], p["steps"]) for p in losses] == [
        (s, s, 1) for s in range(1, 21)]
    assert [p["train_tokens"] for p in losses] == [256 * s for s in range(1, 21)]
    by_step = {p["last_step"]: p["train_loss"] for p in losses}
    assert all(by_step[p["step"]] == p["train_loss"] for p in curves[:-1])
    assert all(math.isfinite(loss) for loss in by_step.values())


def estimate_before_training(cfg, task) -> int:
    """The steps train() estimates for ``cfg``'s budget before its first step,
    on the model it builds (the same seed)."""
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg.model, FFNFactory(cfg.router, cfg.model, cfg.moe, task.data_stats()))
    return steps_for_budget(model, task, cfg.trainer, cfg.trainer.batch_tokens // task.tokens_per_example)


def test_a_flops_budget_is_spent_and_its_evaluations_spread_over_it(make_config):
    # top1 on the synthetic task drops fewer tokens as its gate balances, so its
    # steps cost more than the estimate before training: the run takes fewer steps
    # than that estimate, spends the budget to within half a step, and evaluates
    # at each tenth of the budget spent (to within a step).
    budget = 4e9
    cfg = make_config(*SHORT, "router=top1", f"trainer.max_train_flops={budget}", "trainer.eval_points=10")
    task = SyntheticTask(cfg.task, cfg.data, cfg.seed)
    estimate = estimate_before_training(cfg, task)
    result = train(cfg, task)
    steps = result.metrics["steps"]
    spent = 3 * result.metrics["train_flops_per_token"] * steps * 256
    per_step = spent / steps
    assert 20 <= steps < estimate  # the budget's steps, not the config's 300 nor the estimate's
    assert abs(spent - budget) <= per_step / 2
    assert result.curves[-1]["train_flops"] == pytest.approx(spent)
    assert [p["train_flops"] / per_step for p in result.curves[:-1]] == pytest.approx(
        [i * budget / 10 / per_step for i in range(1, 10)], abs=1.5)
    assert len(result.train_loss_curve) == steps and result.train_loss_curve[-1]["last_step"] == steps


def test_a_router_of_constant_cost_takes_the_steps_estimated_before_training(make_config):
    cfg = make_config(*SHORT, "router=hash", "trainer.max_train_flops=4e9", "trainer.eval_points=10")
    task = SyntheticTask(cfg.task, cfg.data, cfg.seed)
    estimate = estimate_before_training(cfg, task)
    result = train(cfg, task)
    assert result.metrics["steps"] == estimate
    assert [p["step"] for p in result.curves] == [math.ceil(i * estimate / 10) for i in range(1, 11)]
