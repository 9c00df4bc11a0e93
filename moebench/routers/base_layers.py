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

Cost: the auction is a loop of rounds (50-80 at T = 1024, E = 8), each a
dozen small tensor ops that wait for the previous round, so on a CPU it
costs more than the layer's FLOPs: BASE reaches 0.15x (synthetic) and 0.36x
(Tiny Shakespeare) of the equal-FLOPs dense model's FLOP/s, 0.5-0.7x on the
word-level tasks whose steps are longer (results/bench/train_step_cpu.json).
A coarser auction_eps trades optimality (T * eps) for rounds.

The training assignment balances all T tokens of a routing group together
(``RouterContext.num_groups``; the groups' auctions run as one batch), so a
token's expert depends on the others, later positions of its own sequence
included unless the groups are positions (moe/grouping.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.routers import ROUTERS
from moebench.routers.base import (
    DataStats, Router, RouterConfig, RouterContext, RouterOutput, SparseRouting, TrainingWork,
    sparse_from_topk, token_groups,
)


@dataclass
class BaseLayerConfig(RouterConfig):
    # Bidding increment as a share of the affinity range (max - min): the
    # assignment's total affinity is within T * eps of the optimum. 1/50 as
    # fairseq's auction (Lewis et al.'s code, ``fairseq/clib/libbase/
    # balanced_assignment.cpp``: epsilon = (max - min) / 50); 1e-3 takes about
    # 3x the rounds for 0.2% more total affinity (measured at T = 1024, E = 8).
    auction_eps: float = 0.02
    # Evaluation: greedy without capacity (the paper); false applies moe.eval_capacity_factor.
    eval_dropless: bool = True


def balanced_capacities(group_size: int, num_experts: int, first_extra: int = 0,
                        num_groups: int = 1) -> Tensor:
    """``capacity_GE``, tokens per expert in each of G groups of T tokens:
    floor(T/E), plus one for T mod E experts, taken in turn (mod E) from
    ``first_extra`` on, group after group."""
    G, E, r = num_groups, num_experts, group_size % num_experts
    extra_GR = (first_extra + torch.arange(G * r)).view(G, r) % E
    capacity_GE = torch.full((G, E), group_size // E)
    return capacity_GE.scatter_add(1, extra_GR, torch.ones_like(extra_GR))


@torch.no_grad()
def balanced_assignment(scores_GTE: Tensor, capacity_GE: Tensor, eps_G: Tensor) -> tuple[Tensor, float]:
    """``expert_GT``: in each of G independent groups, the assignment
    maximizing sum_t scores[g, t, expert_t] to within T * eps_g, with exactly
    ``capacity_GE[g]`` tokens per expert (summing to T; see
    :func:`balanced_capacities`). The groups run as one batch, round by round;
    a group whose tokens all hold a slot bids no more.

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
    makes over the batch: the slot prices (E x C), the tokens' values (T x E),
    their bids (E x T) and each expert's best C of C + T bids, per group.
    """
    G, T, E = scores_GTE.shape
    device = scores_GTE.device
    if E == 1:
        return torch.zeros(G, T, dtype=torch.long, device=device), 0.0
    capacity_GE, scores_GTE = capacity_GE.to(device), scores_GTE.float()
    C = int(capacity_GE.max())
    # Slots past an expert's capacity are priced +inf: never the cheapest, never sold.
    bid_GEC = torch.zeros(G, E, C, device=device).masked_fill(
        torch.arange(C, device=device) >= capacity_GE[..., None], float("inf"))
    holder_GEC = torch.full((G, E, C), -1, dtype=torch.long, device=device)
    token_GET = torch.arange(T, device=device).expand(G, E, T)
    free_GT = torch.ones(G, T, dtype=torch.bool, device=device)  # tokens without a slot
    work = 0.0
    while free_GT.any():
        work += G * (2 * E * C + 3 * T * E)
        price_GE = bid_GEC.amin(dim=-1)
        value_GT2, expert_GT2 = (scores_GTE - price_GE[:, None]).topk(2, dim=-1)
        # v1 - v2 is +inf when a group has one expert with free capacity: bid its price.
        margin_GT = (value_GT2[..., 0] - value_GT2[..., 1]).nan_to_num(posinf=0.0)
        bid_GT = price_GE.gather(1, expert_GT2[..., 0]) + margin_GT + eps_G[:, None]
        bid_GT = bid_GT.masked_fill(~free_GT, float("-inf"))  # held tokens do not bid
        new_bid_GET = torch.full((G, E, T), float("-inf"), device=device).scatter(
            1, expert_GT2[..., :1].transpose(1, 2), bid_GT[:, None])
        bid_GEC, slot_GEC = torch.cat([bid_GEC, new_bid_GET], dim=-1).topk(C, dim=-1)
        holder_GEC = torch.cat([holder_GEC, token_GET], dim=-1).gather(-1, slot_GEC)
        free_GT = ~_at_holders(holder_GEC, torch.ones_like(holder_GEC, dtype=torch.bool), T)
    expert_GEC = torch.arange(E, device=device)[:, None].expand(G, E, C)
    return _at_holders(holder_GEC, expert_GEC, T), work


def _at_holders(holder_GEC: Tensor, value_GEC: Tensor, num_tokens: int) -> Tensor:
    """``[G, T]``: each slot's value at the token that holds it (0 / False for
    tokens without a slot); unsold slots (holder -1) write to a discarded column."""
    out_GT = value_GEC.new_zeros(holder_GEC.shape[0], num_tokens + 1)
    return out_GT.scatter(1, (holder_GEC + 1).flatten(1), value_GEC.flatten(1))[:, 1:]


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
        (T, E), G = logits_TE.shape, ctx.num_groups
        capacity_GE = balanced_capacities(T // G, E, int(self.next_extra), G)
        self.next_extra.fill_((int(self.next_extra) + G * (T // G % E)) % E)
        logits_GTE = token_groups(logits_TE, G)
        span_G = logits_GTE.amax((1, 2)) - logits_GTE.amin((1, 2))
        eps_G = self.cfg.auction_eps * span_G.clamp_min(1e-6)
        expert_GT, work = balanced_assignment(logits_GTE, capacity_GE, eps_G)
        self.auction_work.add(work, T)
        routing = sigmoid_gated(logits_TE, expert_GT.reshape(T, 1))
        routing.respects_capacity = True
        return RouterOutput(routing, logits_TE)
