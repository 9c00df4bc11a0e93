"""Training compute: FLOPs measured over the training steps as executed, and
the FLOPs budget counted from a training-mode forward that changes nothing."""

import pytest

from moebench.routers.top1 import Top1Router
from moebench.tasks.synthetic import SyntheticTask
from moebench.train import train

SHORT = ("trainer.batch_tokens=256", "trainer.eval_batches=1", "task.oracle_baseline=false")
# Training drops three quarters of the tokens, evaluation hardly any: top-1's
# experts execute about 4x the rows at evaluation that they do in training.
TRAIN_DROPS = ("router=top1", "moe.capacity_factor=0.25", "moe.eval_capacity_factor=2.0")


def run(make_config, *overrides: str) -> tuple[dict, int]:
    """The metrics of a short run on the synthetic task, and its tokens per step."""
    cfg = make_config(*SHORT, *overrides)
    result = train(cfg, SyntheticTask(cfg.task, cfg.data, cfg.seed))
    return result.metrics, cfg.trainer.batch_tokens  # one token per example


def test_train_flops_count_the_experts_as_executed_in_training(make_config):
    m, _ = run(make_config, *TRAIN_DROPS, "trainer.max_steps=3")
    train_experts, eval_experts = m["train_flops_breakdown"]["experts"], m["flops_breakdown"]["experts"]
    every_token_once = eval_experts / (1 - m["drop_rate"])  # one expert per token, in each layer
    # At most C = 0.25 T / E rows per expert: a quarter of the tokens.
    assert train_experts <= 0.25 * every_token_once + 1e-6
    assert m["train_flops_per_token"] == pytest.approx(m["flops_per_token"] - eval_experts + train_experts)


def test_a_routers_training_only_work_counts_in_training_only(make_config, monkeypatch):
    # The optional TrainingOnlyCost protocol (metrics/flops.py): an auction, say.
    monkeypatch.setattr(Top1Router, "training_only_flops_per_token",
                        lambda self, stats: {"auction": 1000.0}, raising=False)
    m, _ = run(make_config, "router=top1", "trainer.max_steps=2", "model.n_layers=2")
    assert m["train_flops_breakdown"]["auction"] == 2 * 1000.0  # one router per MoE layer
    assert "auction" not in m["flops_breakdown"]


def test_the_flops_budget_counts_training_compute(make_config):
    priced, tokens = run(make_config, *TRAIN_DROPS, "trainer.max_steps=1")
    budget = 2 * 3 * priced["flops_per_token"] * tokens  # two steps at the evaluation forward's price
    m, _ = run(make_config, *TRAIN_DROPS, f"trainer.max_train_flops={budget}")
    # Training executes about a quarter of the expert rows: the budget buys more steps.
    assert m["steps"] > 4
    assert m["steps"] == round(budget / (3 * m["train_flops_per_token"] * tokens))


def test_a_budget_trains_exactly_as_the_steps_it_buys(make_config):
    # The budget's forward runs in training mode: k-means' centroids and first
    # draw, top-2's random second experts; none of it may reach the training.
    def untimed(metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if k not in ("train_tokens_per_s", "train_time_s")}

    for router in ("kmeans", "top2"):
        budgeted, _ = run(make_config, f"router={router}", "trainer.max_train_flops=1e9")
        counted, _ = run(make_config, f"router={router}", f"trainer.max_steps={budgeted['steps']}")
        assert budgeted["steps"] >= 2
        assert untimed(budgeted) == untimed(counted)


@pytest.mark.parametrize("router, component", [("base", "auction"), ("sbase", "sinkhorn"),
                                               ("noisy_topk", "noise_gate")])
def test_balanced_and_noisy_routers_report_their_training_only_work(make_config, router, component):
    """BASE's auction rounds and S-BASE's Sinkhorn iterations as executed, noisy
    top-k's noise gate: in the training figure, never in the evaluation one."""
    m, _ = run(make_config, f"router={router}", "trainer.max_steps=2")
    assert m["train_flops_breakdown"][component] > 0
    assert component not in m["flops_breakdown"]
