"""S-BASE (Clark et al. 2022, arXiv:2202.01169, "Unified Scaling Laws for
Routed Language Models", section 2): BASE with the auction replaced by Sinkhorn.

In training, Sinkhorn's algorithm (Cuturi 2013), in the log domain, scales
exp(logits) to a transport plan whose rows each carry one unit (one token)
and whose columns each carry T / E (an equal share per expert); each token
then goes to the top-k experts of its row of the plan. At evaluation, plain
top-k on the logits. The output gate is BASE's, sigmoid(logit) (Lewis et al.
2021); the plan only chooses the experts and is not differentiated.

The plan's column sums run over all T tokens of the group, so in training a
token's experts depend on the others, later positions included
(moe/grouping.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.errors import ConfigError
from moebench.routers import ROUTERS
from moebench.routers.base import Router, RouterConfig, RouterContext, RouterOutput
from moebench.routers.base_layers import sigmoid_gated


@dataclass
class SBaseConfig(RouterConfig):
    sinkhorn_iters: int = 50  # at most
    sinkhorn_tol: float = 1e-2  # stop once every expert's mass is within this share of T / E

    def __post_init__(self) -> None:
        if self.sinkhorn_iters < 1:
            raise ConfigError("router.sinkhorn_iters", self.sinkhorn_iters, "an integer >= 1")
        if self.sinkhorn_tol <= 0:
            raise ConfigError("router.sinkhorn_tol", self.sinkhorn_tol, "a number > 0")


@torch.no_grad()
def sinkhorn_plan(logits_TE: Tensor, max_iters: int, tol: float) -> Tensor:
    """Log of the plan P = exp(logits + u_T + v_E) with rows summing to 1 and
    columns to T/E (to relative error ``tol``, or after ``max_iters`` rounds).

    Each round sets v so that the columns are exact, then u so that the rows
    are; it stops when the columns, disturbed by that last step, are within tol.
    """
    T, E = logits_TE.shape
    logits_TE = logits_TE.float()
    log_share = math.log(T / E)
    u_T1 = torch.zeros(T, 1, device=logits_TE.device)
    for _ in range(max_iters):
        v_1E = log_share - torch.logsumexp(logits_TE + u_T1, dim=0, keepdim=True)
        u_T1 = -torch.logsumexp(logits_TE + v_1E, dim=1, keepdim=True)
        column_E = torch.logsumexp(logits_TE + u_T1 + v_1E, dim=0).exp()
        if (column_E * E / T - 1).abs().max() <= tol:
            break
    return logits_TE + u_T1 + v_1E


@ROUTERS.register("sbase", SBaseConfig)
class SBaseRouter(Router):
    uses_other_tokens = True  # in training: the plan's column sums

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        logits_TE = self.gate_logits(x_TD)
        choose_by_TE = logits_TE
        if self.training:
            choose_by_TE = sinkhorn_plan(logits_TE, self.cfg.sinkhorn_iters, self.cfg.sinkhorn_tol)
        expert_TK = choose_by_TE.topk(self.cfg.k, dim=-1).indices
        return RouterOutput(sigmoid_gated(logits_TE, expert_TK), logits_TE)
