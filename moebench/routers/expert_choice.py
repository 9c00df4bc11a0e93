"""Expert-choice routing (Zhou et al. 2022, arXiv:2202.09368, section 3.2).

S = softmax(X W_g) over experts (T x E); each expert takes the C tokens it
scores highest, G, I = TopK(S^T, C) (eq. 1), and a token's output is the
G-weighted sum of the experts that took it. C = cf * T / E, rounded up: cf is
the mean number of experts per token (2 matches top-2 compute). A token may
reach 0..E experts; every expert processes exactly C tokens, so nothing is
dropped and no balance loss is needed.

Each expert ranks all T tokens of its group, so a token's routing depends on
the others, later positions of its own sequence included (moe/grouping.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.moe.dispatch import capacity
from moebench.routers import ROUTERS
from moebench.routers.base import Router, RouterConfig, RouterContext, RouterOutput, SparseRouting


@dataclass
class ExpertChoiceConfig(RouterConfig):
    capacity_factor: float = 2.0  # c: mean experts per token (section 3.2)


def expert_choice(probs_TE: Tensor, capacity_per_expert: int) -> SparseRouting:
    """Each expert's top ``capacity_per_expert`` tokens, weighted by their probabilities."""
    gate_EC, token_EC = probs_TE.t().topk(capacity_per_expert, dim=-1)
    E, C = token_EC.shape
    return SparseRouting(
        token_idx_A=token_EC.reshape(-1),
        expert_idx_A=torch.arange(E, device=probs_TE.device).repeat_interleave(C),
        weight_A=gate_EC.reshape(-1),
        choice_A=torch.zeros_like(token_EC).reshape(-1),  # tokens do not rank experts here
        score_A=gate_EC.detach().reshape(-1),
        respects_capacity=True,
    )


@ROUTERS.register("expert_choice", ExpertChoiceConfig)
class ExpertChoiceRouter(Router):
    uses_other_tokens = True

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        logits_TE = self.gate_logits(x_TD)
        T, E = logits_TE.shape
        C = min(T, capacity(T, E, 1, self.cfg.capacity_factor))
        return RouterOutput(expert_choice(torch.softmax(logits_TE, dim=-1), C), logits_TE)
