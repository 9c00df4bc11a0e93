"""Noisy top-k gating (Shazeer et al. 2017, arXiv:1701.06538, section 2.1 and Appendix A).

    H(x)_i = (x W_g)_i + N(0, 1) * softplus((x W_noise)_i)        eq. 4 (training only)
    G(x)   = softmax(KeepTopK(H(x), k))                             eqs. 3, 5
    L_importance = w_importance * CV(sum_x G(x))^2                  eqs. 6, 7
    P(x, i) = Phi(((x W_g)_i - kth_excluding(H(x), k, i))
                  / softplus((x W_noise)_i))                         eqs. 8, 9
    L_load = w_load * CV(sum_x P(x, .))^2                           eqs. 10, 11

P(x, i) is the probability that expert i is among the top k when only its
own noise is drawn again: a smooth estimate of the load, which the discrete
counts are not. Noise and losses are for training; evaluation keeps the top k
of the clean logits. W_noise starts at zero, as in the paper (Appendix A,
"initial load imbalance"): noise of std softplus(0) = ln 2 at first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moebench.errors import ConfigError
from moebench.routers import ROUTERS
from moebench.routers.base import (
    DataStats, Router, RouterConfig, RouterContext, RouterOutput, SparseRouting, float32_gate,
    token_groups,
)
from moebench.routers.token_choice import topk_routing


@dataclass
class NoisyTopkConfig(RouterConfig):
    k: int = 2
    importance_coef: float = 0.1  # w_importance (eq. 7)
    load_coef: float = 0.1  # w_load (eq. 11)


def cv_squared(v_E: Tensor) -> Tensor:
    """Squared coefficient of variation (population variance / mean^2) over
    the last dimension; 0 when even."""
    return v_E.var(-1, unbiased=False) / (v_E.mean(-1).square() + 1e-10)


def prob_in_topk(clean_TE: Tensor, noisy_TE: Tensor, noise_std_TE: Tensor, k: int) -> Tensor:
    """P(x, i) of eq. 9, for every token and expert.

    kth_excluding(H, k, i) is the k-th largest of H without H_i: the (k+1)-th
    largest of H when i is in the top k, the k-th largest otherwise.
    """
    top_TK1 = noisy_TE.topk(k + 1, dim=-1).values
    in_topk_TE = noisy_TE >= top_TK1[:, k - 1 : k]
    threshold_TE = torch.where(in_topk_TE, top_TK1[:, k : k + 1], top_TK1[:, k - 1 : k])
    return torch.special.ndtr((clean_TE - threshold_TE) / noise_std_TE)


@ROUTERS.register("noisy_topk", NoisyTopkConfig)
class NoisyTopkRouter(Router):
    def __init__(self, cfg: NoisyTopkConfig, d_model: int, num_experts: int,
                 data: DataStats) -> None:
        super().__init__(cfg, d_model, num_experts, data)
        if cfg.k >= num_experts:  # the load estimator needs a (k+1)-th expert
            raise ConfigError("router.k", cfg.k, f"1..{num_experts - 1} (moe.num_experts - 1)")
        self.noise_gate = nn.Linear(d_model, num_experts, bias=False)  # W_noise
        nn.init.zeros_(self.noise_gate.weight)

    def training_only_flops_per_token(self, stats: object) -> dict[str, float]:
        """x W_noise: the noise gate runs in training only (eq. 4)."""
        return {"noise_gate": 2.0 * self.noise_gate.weight.numel()}

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        clean_TE = self.gate_logits(x_TD)
        if not self.training:  # no noise; the losses only matter in training
            return RouterOutput(self.keep_topk(clean_TE), clean_TE)
        noise_std_TE = nn.functional.softplus(float32_gate(x_TD, self.noise_gate.weight))
        noisy_TE = clean_TE + torch.randn_like(clean_TE) * noise_std_TE
        routing = self.keep_topk(noisy_TE)
        # Both losses per routing group, averaged over the groups.
        (T, E), G = clean_TE.shape, ctx.num_groups
        group_A = routing.token_idx_A // (T // G)
        importance_GE = clean_TE.new_zeros(G * E).index_add(
            0, group_A * E + routing.expert_idx_A, routing.weight_A).view(G, E)
        load_GE = token_groups(prob_in_topk(clean_TE, noisy_TE, noise_std_TE, self.cfg.k), G).sum(1)
        aux = {"importance": self.cfg.importance_coef * cv_squared(importance_GE).mean(),
               "load": self.cfg.load_coef * cv_squared(load_GE).mean()}
        return RouterOutput(routing, clean_TE, aux)

    def keep_topk(self, logits_TE: Tensor) -> SparseRouting:
        """softmax(KeepTopK(logits, k)): the full softmax renormalized over the k kept."""
        return topk_routing(torch.softmax(logits_TE, dim=-1), self.cfg.k, renormalize=True)
