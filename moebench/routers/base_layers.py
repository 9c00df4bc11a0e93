"""BASE layers (Lewis et al. 2021, arXiv:2103.16716, section 3).

Expert e has an embedding c_e (here the gate's row e) and token t the
affinity a_te = x_t . c_e. In training the tokens are assigned by a balanced
linear assignment, maximizing sum_t a_{t, e_t} with every expert taking the
same number of tokens, solved by an auction algorithm (Bertsekas 1988); at
evaluation each token takes its best expert greedily, with no capacity (the
paper's test-time routing: an expert takes however many tokens choose it, so
nothing is dropped and the measured load shows the imbalance). The output is
sigmoid(a_te) * FFN_e(x_t), the paper's gate; no balance loss is needed.

T not divisible by E: the first T mod E experts take ceil(T/E) tokens and
the others floor(T/E), so every token still gets exactly one expert and
nothing is dropped.

The training assignment balances all T tokens of the group together, so a
token's expert depends on the others, later positions of its own sequence
included (moe/grouping.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.routers import ROUTERS
from moebench.routers.base import (
    Router, RouterConfig, RouterContext, RouterOutput, SparseRouting, sparse_from_topk,
)


@dataclass
class BaseLayerConfig(RouterConfig):
    # Bidding increment as a share of the affinity range (max - min): the
    # assignment's total affinity is within T * eps of the optimum.
    auction_eps: float = 1e-3


def balanced_capacities(num_tokens: int, num_experts: int) -> Tensor:
    """Tokens per expert: floor(T/E), plus one for the first T mod E experts."""
    capacity_E = torch.full((num_experts,), num_tokens // num_experts)
    capacity_E[: num_tokens % num_experts] += 1
    return capacity_E


@torch.no_grad()
def balanced_assignment(scores_TE: Tensor, eps: float) -> Tensor:
    """``expert_T`` maximizing sum_t scores[t, expert_t] to within T * eps, with
    exactly :func:`balanced_capacities` tokens per expert.

    Auction algorithm (Bertsekas 1988) with alike objects (Bertsekas & Castanon
    1989), Jacobi style: expert e sells c_e slots, each priced at the bid that
    won it (0 while free). Each round every token without a slot bids at once
    for its best expert e1, by value a_te - p_e with p_e the price of e's
    cheapest slot, offering p_e1 + (v1 - v2) + eps, where v2 is the value of
    its second-best expert: the most it can pay and still be within eps of its
    best choice. Each expert keeps the c_e highest of its slots' and the new
    bids; the tokens it drops bid again. Prices only rise, so the rounds end;
    at the end every token is within eps of its best expert at the final
    prices (eps-complementary slackness), which bounds the gap to the optimal
    total by T * eps.
    """
    T, E = scores_TE.shape
    device = scores_TE.device
    if E == 1 or T == 1:
        return torch.zeros(T, dtype=torch.long, device=device)
    scores_TE = scores_TE.float()
    capacity_E = balanced_capacities(T, E).to(device)
    C = int(capacity_E.max())
    # Slots past an expert's capacity are priced +inf: never the cheapest, never sold.
    bid_EC = torch.zeros(E, C, device=device).masked_fill(
        torch.arange(C, device=device) >= capacity_E[:, None], float("inf"))
    holder_EC = torch.full((E, C), -1, dtype=torch.long, device=device)
    free_U = torch.arange(T, device=device)  # tokens without a slot
    while free_U.numel():
        price_E = bid_EC.min(dim=1).values
        value_U2, expert_U2 = (scores_TE[free_U] - price_E).topk(2, dim=1)
        bid_U = price_E[expert_U2[:, 0]] + value_U2[:, 0] - value_U2[:, 1] + eps
        new_bid_EU = torch.full((E, free_U.numel()), float("-inf"), device=device).scatter(
            0, expert_U2[:, :1].t(), bid_U[None])
        bid_EC, slot_EC = torch.cat([bid_EC, new_bid_EU], dim=1).topk(C, dim=1)
        holder_EC = torch.cat([holder_EC, free_U.expand(E, -1)], dim=1).gather(1, slot_EC)
        held_T = torch.zeros(T, dtype=torch.bool, device=device)
        held_T[holder_EC[holder_EC >= 0]] = True
        free_U = (~held_T).nonzero().squeeze(1)
    sold_EC = holder_EC >= 0
    expert_T = torch.empty(T, dtype=torch.long, device=device)
    expert_T[holder_EC[sold_EC]] = torch.arange(E, device=device)[:, None].expand(E, C)[sold_EC]
    return expert_T


def sigmoid_gated(logits_TE: Tensor, expert_TK: Tensor) -> SparseRouting:
    """Assignments to ``expert_TK``, each gated by sigmoid(affinity) (BASE's output gate)."""
    gate_TE = torch.sigmoid(logits_TE)
    return sparse_from_topk(gate_TE, gate_TE.gather(1, expert_TK), expert_TK)


@ROUTERS.register("base", BaseLayerConfig)
class BaseLayerRouter(Router):
    uses_other_tokens = True  # in training: the balanced assignment

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        logits_TE = self.gate_logits(x_TD)  # affinities x_t . c_e
        if not self.training:  # greedy: each token its best expert, no capacity
            routing = sigmoid_gated(logits_TE, logits_TE.argmax(-1, keepdim=True))
            routing.respects_capacity = True
            return RouterOutput(routing, logits_TE)
        span = (logits_TE.max() - logits_TE.min()).item()
        expert_T = balanced_assignment(logits_TE, self.cfg.auction_eps * max(span, 1e-6))
        routing = sigmoid_gated(logits_TE, expert_T[:, None])
        routing.respects_capacity = True
        return RouterOutput(routing, logits_TE)
