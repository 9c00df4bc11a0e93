"""BASE layers (Lewis et al. 2021, arXiv:2103.16716, section 3).

Expert e has an embedding c_e (here the gate's row e) and token t the
affinity a_te = x_t . c_e. In training the tokens are assigned by a balanced
linear assignment, maximizing sum_t a_{t, e_t} with every expert taking the
same number of tokens, solved by an auction algorithm (Bertsekas 1988); at
evaluation each token takes its best expert greedily, with no capacity (the
paper's test-time routing: an expert takes however many tokens choose it, so
nothing is dropped and the measured load shows the imbalance). The output is
sigmoid(a_te) * FFN_e(x_t), the paper's gate; no balance loss is needed.

Evaluation without capacity is the rule for every router whose paper routes
each token at test time by its own scores (BASE, S-BASE, RL-R, k-means);
``eval_dropless: false`` applies ``moe.eval_capacity_factor`` instead.

T not divisible by E: the paper assumes E divides T, and so does fairseq's
``balanced_assignment`` (``jobs_per_worker = num_jobs / num_workers``). Here
T mod E experts take ceil(T/E) tokens and the others floor(T/E), so every
token still gets exactly one expert; which experts take the extra token
rotates from one routing group to the next (a buffer), so over a training
step every expert receives its share within one token.

Group size: the assignment is only as good as its group is large. Under
``moe.routing_groups=position`` a group is the B tokens at one position (B = 4
at the CPU tier: 512 tokens of 128-token sequences), and with B < E each group
can only spread its B tokens over the B experts whose turn it is: every
expert still trains, but the choice among experts is nearly forced. Lewis et
al. balance thousands of tokens per worker; a group of at least 4E tokens (B >=
32 for E = 8, e.g. ``trainer.batch_tokens=4096`` at the ``tiny`` preset) lets
most tokens reach a preferred expert.

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
    DataStats, Router, RouterConfig, RouterContext, RouterOutput, SparseRouting, TrainingWork,
    sparse_from_topk,
)


@dataclass
class BaseLayerConfig(RouterConfig):
    # Bidding increment as a share of the affinity range (max - min): the
    # assignment's total affinity is within T * eps of the optimum.
    auction_eps: float = 1e-3
    # Evaluation: greedy without capacity (the paper); false applies moe.eval_capacity_factor.
    eval_dropless: bool = True


def balanced_capacities(num_tokens: int, num_experts: int, first_extra: int = 0) -> Tensor:
    """Tokens per expert: floor(T/E), plus one for the T mod E experts
    ``first_extra``, ``first_extra + 1``, ... (mod E)."""
    capacity_E = torch.full((num_experts,), num_tokens // num_experts)
    extra = (first_extra + torch.arange(num_tokens % num_experts)) % num_experts
    capacity_E[extra] += 1
    return capacity_E


@torch.no_grad()
def balanced_assignment(scores_TE: Tensor, capacity_E: Tensor, eps: float) -> tuple[Tensor, float]:
    """``expert_T`` maximizing sum_t scores[t, expert_t] to within T * eps, with
    exactly ``capacity_E`` tokens per expert (summing to T; see
    :func:`balanced_capacities`).

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

    Also returns the work done, one FLOP per element of each pass a round
    makes: the slot prices (E x C), the free tokens' values (U x E), their
    bids (E x U) and each expert's best C of C + U bids.
    """
    T, E = scores_TE.shape
    device = scores_TE.device
    capacity_E = capacity_E.to(device)
    if (capacity_E > 0).sum() == 1:  # one expert takes every token (E = 1, or T = 1)
        return torch.full((T,), int(capacity_E.argmax()), dtype=torch.long, device=device), 0.0
    scores_TE = scores_TE.float()
    C = int(capacity_E.max())
    # Slots past an expert's capacity are priced +inf: never the cheapest, never sold.
    bid_EC = torch.zeros(E, C, device=device).masked_fill(
        torch.arange(C, device=device) >= capacity_E[:, None], float("inf"))
    holder_EC = torch.full((E, C), -1, dtype=torch.long, device=device)
    free_U = torch.arange(T, device=device)  # tokens without a slot
    work = 0.0
    while free_U.numel():
        work += 2 * E * C + 3 * free_U.numel() * E
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
    return expert_T, work


def sigmoid_gated(logits_TE: Tensor, expert_TK: Tensor) -> SparseRouting:
    """Assignments to ``expert_TK``, each gated by sigmoid(affinity) (BASE's output gate)."""
    gate_TE = torch.sigmoid(logits_TE)
    return sparse_from_topk(gate_TE, gate_TE.gather(1, expert_TK), expert_TK)


@ROUTERS.register("base", BaseLayerConfig)
class BaseLayerRouter(Router):
    uses_other_tokens = True  # in training: the balanced assignment

    def __init__(self, cfg: BaseLayerConfig, d_model: int, num_experts: int, data: DataStats) -> None:
        super().__init__(cfg, d_model, num_experts, data)
        # The first expert to take an extra token in the next group (T mod E > 0).
        self.register_buffer("next_extra", torch.tensor(0))
        self.auction_work = TrainingWork("auction")

    def training_only_flops_per_token(self, stats: object) -> dict[str, float]:
        return self.auction_work.per_token()

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        logits_TE = self.gate_logits(x_TD)  # affinities x_t . c_e
        if not self.training:  # greedy: each token its best expert
            routing = sigmoid_gated(logits_TE, logits_TE.argmax(-1, keepdim=True))
            routing.respects_capacity = self.cfg.eval_dropless
            return RouterOutput(routing, logits_TE)
        T, E = logits_TE.shape
        capacity_E = balanced_capacities(T, E, int(self.next_extra))
        self.next_extra.fill_((int(self.next_extra) + T % E) % E)
        span = (logits_TE.max() - logits_TE.min()).item()
        expert_T, work = balanced_assignment(logits_TE, capacity_E, self.cfg.auction_eps * max(span, 1e-6))
        self.auction_work.add(work, T)
        routing = sigmoid_gated(logits_TE, expert_T[:, None])
        routing.respects_capacity = True
        return RouterOutput(routing, logits_TE)
