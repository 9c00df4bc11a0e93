"""A budget in training FLOPs is spent as executed (moebench.schedule.Horizon)."""

import pytest

from moebench.config import TrainerConfig
from moebench.schedule import Horizon, budget_steps

TOKENS = 1024


def spend(horizon: Horizon, cost_at) -> list[int]:
    """Run the steps ``horizon`` allows, step k (from 0) executing ``cost_at(k)``
    forward FLOPs per token; the step count after each."""
    counts = []
    while horizon.taken < horizon.steps:
        counts.append(horizon.step(cost_at(horizon.taken)))
    return counts


@pytest.mark.parametrize("budget", [6e9, 6.00013e9, 7.77e9])
def test_steps_of_constant_cost_keep_the_estimate_before_training(budget):
    t = TrainerConfig(max_train_flops=budget)
    estimate = budget_steps(t, TOKENS, forward_flops_per_token=1.3e5)
    counts = spend(Horizon(budget, TOKENS, estimate), lambda k: 1.3e5)
    assert counts == [estimate] * estimate


@pytest.mark.parametrize("cost_at", [
    lambda k: 1e5 * (1 + min(k, 100) / 100),  # a gate that drops less as it learns: up to 2x
    lambda k: 2e5 / (1 + min(k, 50) / 50),  # a gate that activates fewer experts: down to 1/2
    lambda k: 1e5 * (1.5 if k % 2 else 1.0),  # a random one
])
def test_a_changing_cost_spends_the_budget_to_within_half_a_step(cost_at):
    budget = 3 * 1e5 * TOKENS * 300
    horizon = Horizon(budget, TOKENS, budget_steps(TrainerConfig(max_train_flops=budget), TOKENS, cost_at(0)))
    spend(horizon, cost_at)
    last_step = 3 * cost_at(horizon.taken - 1) * TOKENS
    assert abs(horizon.spent - budget) <= last_step / 2
    assert horizon.spent == pytest.approx(3 * TOKENS * sum(cost_at(k) for k in range(horizon.taken)))


def test_rising_cost_takes_fewer_steps_than_estimated_and_falling_more():
    budget = 3 * 1e5 * TOKENS * 300
    rising = Horizon(budget, TOKENS, 300)
    spend(rising, lambda k: 1e5 * (1 + k / 300))
    falling = Horizon(budget, TOKENS, 300)
    spend(falling, lambda k: 1e5 / (1 + k / 300))
    assert rising.taken < 300 < falling.taken


def test_a_skipped_step_is_counted_at_the_mean_cost_so_far():
    horizon = Horizon(budget=3 * 10 * TOKENS * 10, tokens_per_step=TOKENS, estimate=10)
    horizon.step(None)  # skipped before any step cost anything: the estimate stands
    assert (horizon.spent, horizon.steps) == (0.0, 10)
    horizon.step(10.0)
    horizon.step(None)
    assert horizon.spent == 2 * 3 * 10 * TOKENS
    assert horizon.steps == 3 + 8  # three taken, the first free; the budget's 8 other steps
