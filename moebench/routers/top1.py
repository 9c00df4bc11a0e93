"""Switch Transformer top-1 routing (Fedus, Zoph & Shazeer 2021, arXiv:2101.03961).

p(x) = softmax(W_r x) in float32 (eq. 1); each token goes to argmax p with
combine weight p_i(x) (eq. 2). Load-balancing loss, eq. 4-6:
    loss = alpha * E * sum_e f_e * P_e
with f_e the share of tokens dispatched to e and P_e the mean router
probability for e; it equals alpha under uniform routing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.routers import ROUTERS
from moebench.routers.base import (
    Router, RouterConfig, RouterContext, RouterOutput, sparse_from_topk, token_groups,
)


@dataclass
class Top1Config(RouterConfig):
    balance_coef: float = 0.01  # alpha (Switch section 2.2)
    jitter_eps: float = 0.0  # multiplicative input jitter; Switch used 1e-2 (section 2.4)


def switch_balance_loss(probs_TE: Tensor, expert_T: Tensor, num_groups: int = 1) -> Tensor:
    """E * sum_e f_e * P_e (Switch eq. 4) in each routing group, averaged over
    the groups as GShard averages its l_aux; 1.0 under uniform routing."""
    (T, E), G = probs_TE.shape, num_groups
    group_T = torch.arange(T, device=expert_T.device) // (T // G)
    f_GE = torch.bincount(group_T * E + expert_T, minlength=G * E).view(G, E).to(probs_TE.dtype) / (T // G)
    P_GE = token_groups(probs_TE, G).mean(1)
    return E * torch.dot(f_GE.flatten(), P_GE.flatten()) / G  # the mean over groups of sum_e f_e P_e


def jitter(x_TD: Tensor, eps: float) -> Tensor:
    """Multiply the router input by U(1 - eps, 1 + eps) noise (Switch section 2.4)."""
    return x_TD * torch.empty_like(x_TD).uniform_(1 - eps, 1 + eps)


@ROUTERS.register("top1", Top1Config)
class Top1Router(Router):
    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        if self.training and self.cfg.jitter_eps > 0:
            x_TD = jitter(x_TD, self.cfg.jitter_eps)
        logits_TE = self.gate_logits(x_TD)
        probs_TE = torch.softmax(logits_TE, dim=-1)
        weight_T1, expert_T1 = probs_TE.max(dim=-1, keepdim=True)
        aux = {"balance": self.cfg.balance_coef * switch_balance_loss(probs_TE, expert_T1[:, 0], ctx.num_groups)}
        return RouterOutput(sparse_from_topk(probs_TE, weight_T1, expert_T1), logits_TE, aux)
