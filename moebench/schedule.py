"""A run's plan: how many steps its budget buys, its learning rate at each
step, and when it evaluates.

A budget in steps or tokens fixes the steps before training. A budget in
training FLOPs is spent as executed (:class:`Horizon`): a router whose cost
changes as its gate learns (top-1 drops fewer tokens once it balances, top-p
activates fewer experts) trains on what the budget buys it, not on an estimate
made at initialization.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moebench.config import TrainerConfig
from moebench.evaluate import EVAL_SEED, batch_context
from moebench.metrics.flops import forward_flops
from moebench.metrics.probe import probing
from moebench.tasks import Task


def learning_rate(step: int, cfg: TrainerConfig) -> float:
    """Linear warmup, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def training_forward_flops(model: nn.Module, task: Task, batch_size: int) -> float:
    """Forward FLOPs per token of one training-mode forward on a training
    batch, routed as training routes (top-2's random second expert, the
    training capacity, RL's sampling, BASE's auction), but with no gradient,
    no update, and the model's buffers and the random state left as they
    were (metrics/probe.py): the estimate leaves the run's training untouched."""
    device = next(model.parameters()).device
    batch = task.get_batch("train", batch_size, torch.Generator().manual_seed(EVAL_SEED)).to(device)
    with probing(model, training=True, device=device):
        out = model(batch.inputs, batch_context(batch, step=0))
        task.token_losses(out, batch)  # an adaptive head computes (and counts) its work here
    return sum(forward_flops(model, out.layer_stats, task.tokens_per_example, training=True).values())


def steps_for_budget(model: nn.Module, task: Task, t: TrainerConfig, batch_size: int) -> int:
    """The steps that ``t``'s budget (``max_tokens``, or an estimate for
    ``max_train_flops``) buys ``model`` on ``task`` in batches of ``batch_size`` examples."""
    return budget_steps(t, batch_size * task.tokens_per_example,
                        training_forward_flops(model, task, batch_size))


def budget_steps(cfg: TrainerConfig, tokens_per_step: int, forward_flops_per_token: float) -> int:
    """Steps that fit the budget. Training FLOPs are taken as 3x the forward
    FLOPs of a training step (forward + backward for activations and weights;
    Kaplan et al. 2020, section 2.1), with the experts counted as executed."""
    if cfg.max_tokens is not None:
        return max(1, round(cfg.max_tokens / tokens_per_step))
    if cfg.max_train_flops is not None:
        return steps_left(cfg.max_train_flops, 3 * forward_flops_per_token * tokens_per_step)
    return cfg.max_steps


def steps_left(flops_left: float, flops_per_step: float) -> int:
    """Whole steps of ``flops_per_step`` nearest to ``flops_left``, at least 1."""
    return max(1, round(flops_left / flops_per_step))


class Horizon:
    """The step count of a run with a budget in training FLOPs, re-estimated
    after every step: the steps taken plus the FLOPs left at the mean cost
    of a step so far. The run stops once less than half a step's cost is
    left, so it spends its budget to within half a step whatever its router's
    cost does over training; the learning-rate schedule and the evaluation
    points follow the estimate. A router whose steps all cost what the
    estimate before training measured keeps that step count throughout."""

    def __init__(self, budget: float, tokens_per_step: int, estimate: int) -> None:
        self.budget, self.tokens_per_step, self.steps = budget, tokens_per_step, estimate
        self.spent = 0.0
        self.taken = 0
        self.counted = 0  # the steps in ``spent``

    def step(self, forward_flops_per_token: float | None) -> int:
        """Count one step that executed ``forward_flops_per_token`` (None: a
        skipped step, taken at the mean cost so far, or free before any step
        has cost something); return the step count."""
        self.taken += 1
        if forward_flops_per_token is not None:
            self.spent += 3 * forward_flops_per_token * self.tokens_per_step
        elif self.counted:
            self.spent += self.spent / self.counted
        else:
            return self.steps
        self.counted += 1
        per_step = self.spent / self.counted
        left = self.budget - self.spent
        self.steps = self.taken + (steps_left(left, per_step) if left >= per_step / 2 else 0)
        return self.steps


def evaluations_due(steps_taken: int, t: TrainerConfig) -> int:
    """How many of the evaluations before the final one are due once
    ``steps_taken`` of ``t.max_steps`` steps have run. With ``eval_points``,
    that many points evenly spaced over ``max_steps`` (the i-th after step
    ceil(i * max_steps / eval_points)), the last at the end, so runs of any
    budget give curves of as many points; it wins over ``eval_every``. A run
    of fewer steps than points evaluates after every step. The final
    evaluation, after the last step, is not counted: train() always runs it."""
    if steps_taken >= t.max_steps:
        steps_taken = t.max_steps - 1
    if t.eval_points is None:
        return steps_taken // t.eval_every
    return min(t.eval_points - 1, steps_taken * t.eval_points // t.max_steps)
