"""RL-R: routing trained by REINFORCE (Clark et al. 2022, arXiv:2202.01169,
"Unified Scaling Laws for Routed Language Models", section 2; Williams 1992).

The router is a policy pi(e | x) = softmax(W_g x). In training each token's
expert is sampled from pi, and its output enters with weight 1, so the
routing is learned from the reward alone; evaluation takes argmax pi. The
reward of token t is r_t = -loss_t, the model's own loss on it at this step,
which the training loop hands to the hook ``on_token_loss``. The policy
gradient enters through the auxiliary losses as the surrogate

    L_pg = -mean_t (r_t - b_t) log pi(e_t | x_t),

whose gradient is an unbiased estimate of -grad_W E[r] for any baseline b
that does not depend on the sampled e_t (Williams 1992). The mean runs over
the tokens that have a loss: masked LM's unmasked positions have no reward,
so their choices take no policy gradient and do not move the baseline.
Baselines:

    moving_average  b = a running mean of past batches' mean reward. It is a
                    buffer that the hook updates without gradient: module
                    state that the optimizer does not own, on purpose.
    learned         b_t = w . x_t + c, a linear head on the detached token,
                    fitted to r_t by squared error.

The entropy bonus is the entropy regularizer every router has, with a
negative ``entropy_coef`` (conf/router/rl.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moebench.errors import ConfigError
from moebench.routers import ROUTERS
from moebench.routers.base import (
    DataStats, Router, RouterConfig, RouterContext, RouterOutput, sparse_from_topk,
)
from moebench.routers.token_choice import sample_experts

BASELINES = ("moving_average", "learned")


@dataclass
class RLConfig(RouterConfig):
    pg_coef: float = 1.0  # weight of the policy-gradient surrogate
    baseline: str = "moving_average"  # moving_average | learned
    baseline_decay: float = 0.99  # moving_average: b <- decay * b + (1 - decay) * mean r

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ConfigError("router.baseline", self.baseline, BASELINES)
        if not 0 <= self.baseline_decay < 1:
            raise ConfigError("router.baseline_decay", self.baseline_decay, "0 <= decay < 1")


def reinforce_loss(log_pi_T: Tensor, reward_T: Tensor, baseline_T: Tensor) -> Tensor:
    """The REINFORCE surrogate -mean (r - b) log pi(e | x); r and b carry no gradient."""
    return -((reward_T - baseline_T).detach() * log_pi_T).mean()


@ROUTERS.register("rl", RLConfig)
class RLRouter(Router):
    def __init__(self, cfg: RLConfig, d_model: int, num_experts: int, data: DataStats) -> None:
        super().__init__(cfg, d_model, num_experts, data)
        if cfg.baseline == "learned":
            self.baseline_head = nn.Linear(d_model, 1)
            nn.init.zeros_(self.baseline_head.weight)
            nn.init.zeros_(self.baseline_head.bias)
        else:  # NaN until the first batch, whose mean reward it then starts from
            self.register_buffer("reward_mean", torch.tensor(float("nan")))

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        logits_TE = self.gate_logits(x_TD)
        probs_TE = torch.softmax(logits_TE, dim=-1)
        expert_T1 = (sample_experts(probs_TE) if self.training else probs_TE.argmax(-1))[:, None]
        routing = sparse_from_topk(probs_TE, torch.ones_like(probs_TE[:, :1]), expert_T1)
        if not self.training:
            return RouterOutput(routing, logits_TE)
        log_pi_T = torch.log_softmax(logits_TE, dim=-1).gather(1, expert_T1).squeeze(1)
        x_TD = x_TD.detach()

        def on_token_loss(token_losses_T: Tensor, counted_T: Tensor) -> dict[str, Tensor]:
            return self.policy_gradient(log_pi_T[counted_T], -token_losses_T[counted_T],
                                        x_TD[counted_T])

        return RouterOutput(routing, logits_TE, on_token_loss=on_token_loss)

    def policy_gradient(self, log_pi_T: Tensor, reward_T: Tensor,
                        x_TD: Tensor) -> dict[str, Tensor]:
        """The REINFORCE surrogate, and the learned baseline's regression loss."""
        losses: dict[str, Tensor] = {}
        if self.cfg.baseline == "learned":
            baseline_T = self.baseline_head(x_TD.float()).squeeze(-1)
            losses["baseline"] = (baseline_T - reward_T).square().mean()
        else:
            baseline_T = self.moving_average_baseline(reward_T).expand_as(reward_T)
        surrogate = reinforce_loss(log_pi_T, reward_T, baseline_T)
        losses["policy_gradient"] = self.cfg.pg_coef * surrogate
        return losses

    @torch.no_grad()
    def moving_average_baseline(self, reward_T: Tensor) -> Tensor:
        """The baseline from past batches (the first batch: its own mean), then updated."""
        batch_mean = reward_T.mean()
        baseline = torch.where(self.reward_mean.isnan(), batch_mean, self.reward_mean)
        self.reward_mean.copy_(torch.lerp(batch_mean, baseline, self.cfg.baseline_decay))
        return baseline
