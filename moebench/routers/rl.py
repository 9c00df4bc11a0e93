"""RL-R: routing trained by REINFORCE (Clark et al. 2022, arXiv:2202.01169,
"Unified Scaling Laws for Routed Language Models", section 2; Williams 1992).

The router is a policy pi(e | x) = softmax(W_g x). In training each token's
expert is sampled from pi; evaluation takes argmax pi, without capacity
(``eval_dropless``, the rule of every router whose paper routes each token
by its own scores: see routers/base_layers.py); ``eval_dropless: false``
applies ``moe.eval_capacity_factor`` instead. The reward of token t is
r_t = -loss_t, the model's own loss on it at this step, which the training
loop hands to the hook ``on_token_loss``. The policy gradient enters through
the auxiliary losses as the surrogate

    L_pg = -mean_t (r_t - b_t) log pi(e_t | x_t),

whose gradient is an unbiased estimate of -grad_W E[r] for any baseline b
that does not depend on the sampled e_t (Williams 1992). The mean runs over
the tokens that have a loss: masked LM's unmasked positions have no reward,
so their choices take no policy gradient and do not move the baseline.
Baselines:

    moving_average  b = a running mean of past steps' mean reward, moved once
                    per training step (Router.finish_step) by the mean
                    of all of the step's rewards, however often the hook
                    is called in a step (micro-batches, position groups)
                    and on however many processes. Buffers moved without
                    gradient: module state the optimizer does not own, on
                    purpose.
    learned         b_t = w . x_t + c, a linear head on the detached token,
                    fitted to r_t by squared error.

Besides REINFORCE, Clark et al. train RL-R as a Switch layer (section 2.2 and
appendix, as we read them): the chosen expert's output is scaled by its
probability pi(e_t | x_t) (``scale_by_policy``; false: weight 1, the routing
learned from the reward alone), and Switch's load-balancing loss
alpha * E * sum_e f_e P_e (Fedus et al. 2021, eq. 4), with f_e the share of
sampled choices, keeps the policy from collapsing onto few experts
(``balance_coef``; 0 turns it off).
The entropy bonus is the entropy regularizer every router has, with a
negative ``entropy_coef`` (conf/router/rl.yaml).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moebench.errors import ConfigError
from moebench.routers import ROUTERS
from moebench.routers.base import (
    DataStats, Router, RouterConfig, RouterContext, RouterOutput, float32_gate, sparse_from_topk,
)
from moebench.routers.token_choice import sample_experts
from moebench.routers.top1 import switch_balance_loss

BASELINES = ("moving_average", "learned")


@dataclass
class RLConfig(RouterConfig):
    pg_coef: float = 1.0  # weight of the policy-gradient surrogate
    baseline: str = "moving_average"  # moving_average | learned
    baseline_decay: float = 0.99  # moving_average, per step: b <- decay * b + (1 - decay) * mean r
    scale_by_policy: bool = True  # combine weight pi(e | x) as Switch; false: 1
    balance_coef: float = 0.01  # alpha of Switch's load-balancing loss; 0: none
    # Evaluation: argmax pi without capacity; false applies moe.eval_capacity_factor.
    eval_dropless: bool = True

    def __post_init__(self) -> None:
        if self.k != 1:
            raise ConfigError("router.k", self.k, "1 (the policy samples one expert per token)")
        if self.baseline not in BASELINES:
            raise ConfigError("router.baseline", self.baseline, BASELINES)
        if not 0 <= self.baseline_decay < 1:
            raise ConfigError("router.baseline_decay", self.baseline_decay, "0 <= decay < 1")
        if self.balance_coef < 0:
            raise ConfigError("router.balance_coef", self.balance_coef, "a number >= 0")


def mean_or_zero(x_T: Tensor) -> Tensor:
    """The mean, and 0 for no tokens (a routing group without a counted token)."""
    return x_T.sum() / max(1, x_T.numel())


def reinforce_loss(log_pi_T: Tensor, reward_T: Tensor, baseline_T: Tensor) -> Tensor:
    """The REINFORCE surrogate -mean (r - b) log pi(e | x); r and b carry no gradient."""
    return -mean_or_zero((reward_T - baseline_T).detach() * log_pi_T)


@ROUTERS.register("rl", RLConfig)
class RLRouter(Router):
    def __init__(self, cfg: RLConfig, d_model: int, num_experts: int, data: DataStats) -> None:
        super().__init__(cfg, d_model, num_experts, data)
        if cfg.baseline == "learned":
            self.baseline_head = nn.Linear(d_model, 1)
            nn.init.zeros_(self.baseline_head.weight)
            nn.init.zeros_(self.baseline_head.bias)
        else:
            # The moving average of the finished steps' mean rewards (NaN before
            # the first), and the sum and count of the rewards of the step under
            # way, folded in when it finishes.
            self.register_buffer("reward_mean", torch.tensor(float("nan")))
            self.register_buffer("step_reward", torch.zeros(2))

    def training_only_flops_per_token(self, stats: object) -> dict[str, float]:
        """The learned baseline's x w + b in training only; sampling and the
        log-probabilities are elementwise, left out as everywhere (metrics/flops.py)."""
        if self.cfg.baseline != "learned":
            return {}
        return {"reinforce_baseline": 2.0 * self.baseline_head.weight.numel()}

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        logits_TE = self.gate_logits(x_TD)
        probs_TE = torch.softmax(logits_TE, dim=-1)
        expert_T1 = (sample_experts(probs_TE) if self.training else probs_TE.argmax(-1))[:, None]
        weight_T1 = probs_TE.gather(1, expert_T1)
        if not self.cfg.scale_by_policy:
            weight_T1 = torch.ones_like(weight_T1)
        routing = sparse_from_topk(probs_TE, weight_T1, expert_T1)
        if not self.training:
            routing.respects_capacity = self.cfg.eval_dropless
            return RouterOutput(routing, logits_TE)
        aux: dict[str, Tensor] = {}
        if self.cfg.balance_coef > 0:
            aux["balance"] = self.cfg.balance_coef * switch_balance_loss(probs_TE, expert_T1[:, 0], ctx.num_groups)
        log_pi_T = torch.log_softmax(logits_TE, dim=-1).gather(1, expert_T1).squeeze(1)
        x_TD = x_TD.detach()

        def on_token_loss(token_losses_T: Tensor, counted_T: Tensor) -> dict[str, Tensor]:
            return self.policy_gradient(log_pi_T[counted_T], -token_losses_T[counted_T], x_TD[counted_T])

        return RouterOutput(routing, logits_TE, aux, on_token_loss=on_token_loss)

    def policy_gradient(self, log_pi_T: Tensor, reward_T: Tensor, x_TD: Tensor) -> dict[str, Tensor]:
        """The REINFORCE surrogate, and the learned baseline's regression loss."""
        losses: dict[str, Tensor] = {}
        if self.cfg.baseline == "learned":
            baseline_T = (float32_gate(x_TD, self.baseline_head.weight)
                          + self.baseline_head.bias.float()).squeeze(-1)
            losses["baseline"] = mean_or_zero((baseline_T - reward_T).square())
        else:
            baseline_T = self.moving_average_baseline(reward_T).expand_as(reward_T)
        surrogate = reinforce_loss(log_pi_T, reward_T, baseline_T)
        losses["policy_gradient"] = self.cfg.pg_coef * surrogate
        return losses

    @torch.no_grad()
    def moving_average_baseline(self, reward_T: Tensor) -> Tensor:
        """The baseline from past steps (in the first step: these rewards' mean);
        these rewards join their step's sum, which moves the average once, as
        the step finishes (:meth:`finish_step`)."""
        self.step_reward += torch.stack([reward_T.sum(), reward_T.new_tensor(reward_T.numel())])
        return torch.where(self.reward_mean.isnan(), reward_T.mean(), self.reward_mean)

    @torch.no_grad()
    def finish_step(self, sum_over_ranks: Callable[[Tensor], Tensor]) -> None:
        """The moving average moved by the mean reward of the whole step."""
        if self.cfg.baseline != "moving_average":
            return
        total, count = sum_over_ranks(self.step_reward)
        if count > 0:
            step_mean = total / count
            previous = torch.where(self.reward_mean.isnan(), step_mean, self.reward_mean)
            self.reward_mean.copy_(torch.lerp(step_mean, previous, self.cfg.baseline_decay))
        self.step_reward.zero_()
