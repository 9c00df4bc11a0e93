"""Soft MoE (Puigcerver et al. 2023, arXiv:2308.00951, section 2).

No token is assigned anywhere: with N = E * S slots (S per expert) and
parameters Phi (D x N),

    logits = scale * l2norm(X) l2norm(Phi)   the paper's normalization, scale learned
    D = softmax of the logits over tokens     dispatch: each slot a convex mix of tokens
    C = softmax of the logits over slots      combine: each output a convex mix of slots

The slots X~ = D^T X go through the same expert FFNs as every other router, S
per expert, and Y = C Y~ (MoEBlock._soft). For metrics and the stability
losses the per-expert logits are the log-sum-exp over each expert's slots,
whose softmax is the combine mass a token gives each expert.

Every slot mixes all T tokens of the group: each output depends on every
other token, later positions of its own sequence included (moe/grouping.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moebench.routers import ROUTERS
from moebench.routers.base import (
    DataStats, Router, RouterConfig, RouterContext, RouterOutput, SoftRouting,
)


@dataclass
class SoftConfig(RouterConfig):
    slots_per_expert: int = 1  # p in the paper


def soft_routing(logits_TN: Tensor, slots_per_expert: int) -> SoftRouting:
    """Dispatch weights normalized over tokens, combine weights over slots."""
    return SoftRouting(
        dispatch_TN=torch.softmax(logits_TN, dim=0),
        combine_TN=torch.softmax(logits_TN, dim=1),
        slots_per_expert=slots_per_expert,
    )


@ROUTERS.register("soft", SoftConfig)
class SoftRouter(Router):
    has_gate = False
    uses_other_tokens = True

    def __init__(self, cfg: SoftConfig, d_model: int, num_experts: int, data: DataStats) -> None:
        super().__init__(cfg, d_model, num_experts, data)
        N = num_experts * cfg.slots_per_expert
        self.slots_DN = nn.Parameter(torch.randn(d_model, N) / math.sqrt(d_model))  # Phi
        self.scale = nn.Parameter(torch.ones(()))

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        x_TD = nn.functional.normalize(x_TD.float(), dim=1)
        slots_DN = nn.functional.normalize(self.slots_DN.float(), dim=0)
        logits_TN = self.scale * (x_TD @ slots_DN)
        S = self.cfg.slots_per_expert
        logits_TE = logits_TN.view(-1, self.num_experts, S).logsumexp(-1)
        return RouterOutput(soft_routing(logits_TN, S), logits_TE)

    def flops_per_token(self) -> dict[str, float]:
        """The slot logits; the mixing itself is counted by the block."""
        D, N = self.slots_DN.shape
        return {"router": 2.0 * D * N}
