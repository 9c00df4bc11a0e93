"""Expert-choice routing (Zhou et al. 2022, arXiv:2202.09368, section 3.2).

S = softmax(X W_g) over experts (T x E); each expert takes the C tokens it
scores highest, G, I = TopK(S^T, C) (eq. 1), and a token's output is the
G-weighted sum of the experts that took it. C = cf * T / E, rounded up: cf is
the mean number of experts per token (2 matches top-2 compute). A token may
reach 0..E experts; every expert processes exactly C tokens, so nothing is
dropped and no balance loss is needed.

Each expert ranks all tokens of its routing group (``RouterContext.num_groups``),
so a token's routing depends on the others, later positions of its own
sequence included unless the groups are positions (moe/grouping.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.errors import ConfigError
from moebench.moe.dispatch import capacity
from moebench.routers import ROUTERS
from moebench.routers.base import (
    Router, RouterConfig, RouterContext, RouterOutput, SparseRouting, token_groups,
)


@dataclass
class ExpertChoiceConfig(RouterConfig):
    capacity_factor: float = 2.0  # c: mean experts per token (section 3.2)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.capacity_factor) and self.capacity_factor > 0):
            raise ConfigError("router.capacity_factor", self.capacity_factor, "a finite number > 0")


def expert_choice(probs_TE: Tensor, capacity_per_expert: int, num_groups: int = 1) -> SparseRouting:
    """Each expert's top ``capacity_per_expert`` tokens of each routing group,
    weighted by their probabilities."""
    (T, E), G, C = probs_TE.shape, num_groups, capacity_per_expert
    gate_GEC, token_GEC = token_groups(probs_TE, G).transpose(1, 2).topk(C, dim=-1)
    token_GEC = token_GEC + (T // G) * torch.arange(G, device=probs_TE.device)[:, None, None]
    expert_GEC = torch.arange(E, device=probs_TE.device)[:, None].expand(G, E, C)
    return SparseRouting(
        token_idx_A=token_GEC.reshape(-1),
        expert_idx_A=expert_GEC.reshape(-1),
        weight_A=gate_GEC.reshape(-1),
        choice_A=torch.zeros_like(token_GEC).reshape(-1),  # tokens do not rank experts here
        score_A=gate_GEC.detach().reshape(-1),
        respects_capacity=True,
    )


@ROUTERS.register("expert_choice", ExpertChoiceConfig)
class ExpertChoiceRouter(Router):
    uses_other_tokens = True

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        logits_TE = self.gate_logits(x_TD)
        (T, E), G = logits_TE.shape, ctx.num_groups
        C = min(T // G, capacity(T // G, E, 1, self.cfg.capacity_factor))
        return RouterOutput(expert_choice(torch.softmax(logits_TE, dim=-1), C, G), logits_TE)
