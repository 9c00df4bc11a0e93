"""S-BASE (Clark et al. 2022, arXiv:2202.01169, "Unified Scaling Laws for
Routed Language Models", section 2): BASE with the auction replaced by Sinkhorn.

In training, Sinkhorn's algorithm (Cuturi 2013), in the log domain, scales
exp(logits) to a transport plan whose rows each carry one unit (one token)
and whose columns each carry T / E (an equal share per expert); each token
then goes to the top-k experts of its row of the plan. The plan only chooses
the experts and is not differentiated.

Evaluation: plain top-k on the logits, without capacity (``eval_dropless``),
the test-time rule of BASE (Lewis et al. 2021, greedy and undropped) and of
Megatron-LM's ``sinkhorn_load_balancing`` (top-k of the gate at evaluation,
in a MoE that drops nothing); ``eval_dropless: false`` applies
``moe.eval_capacity_factor`` instead.

The gate (``gate``): S-BASE keeps BASE's sigmoid(logit) for top-1, the
routing Clark et al. study; they do not say which gate it takes for k > 1,
and ``auto`` follows Megatron-LM there: sigmoid for k = 1, softmax over all
E logits for k > 1 (each chosen expert weighted by its probability, not
renormalized over the k). ``sigmoid`` or ``softmax`` forces one for every k.

Group size: the plan's columns balance one routing group. Under
``moe.routing_groups=position`` a group is the B tokens at one position (B = 4
at the CPU tier), fewer than the E = 8 experts: each column then carries half
a token, the top-1 of a row is close to the greedy choice, and the capacity
(1 token per expert at cf 1.25) drops the collisions. Clark et al. route
groups of thousands of tokens; give a group at least 4E tokens (B >= 32 for
E = 8, e.g. ``trainer.batch_tokens=4096`` at the ``tiny`` preset) for the
plan to balance anything.

The plan's column sums run over all T tokens of a routing group
(``RouterContext.num_groups``; the groups' plans are computed as one batch),
so in training a token's experts depend on the others, later positions
included unless the groups are positions (moe/grouping.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.errors import ConfigError
from moebench.routers import ROUTERS
from moebench.routers.base import (
    DataStats, Router, RouterConfig, RouterContext, RouterOutput, TrainingWork, sparse_from_topk,
    token_groups,
)

GATES = ("auto", "sigmoid", "softmax")


@dataclass
class SBaseConfig(RouterConfig):
    sinkhorn_iters: int = 50  # at most
    sinkhorn_tol: float = 1e-2  # stop once every expert's mass is within this share of T / E
    gate: str = "auto"  # auto (Megatron-LM: sigmoid for k = 1, softmax for k > 1) | sigmoid | softmax
    # Evaluation: top-k without capacity (Megatron-LM, BASE); false applies moe.eval_capacity_factor.
    eval_dropless: bool = True

    def __post_init__(self) -> None:
        if self.sinkhorn_iters < 1:
            raise ConfigError("router.sinkhorn_iters", self.sinkhorn_iters, "an integer >= 1")
        if self.sinkhorn_tol <= 0:
            raise ConfigError("router.sinkhorn_tol", self.sinkhorn_tol, "a number > 0")
        if self.gate not in GATES:
            raise ConfigError("router.gate", self.gate, GATES)


@torch.no_grad()
def sinkhorn_plan(logits_GTE: Tensor, max_iters: int, tol: float) -> tuple[Tensor, int]:
    """Log of the plan P = exp(logits + u_T + v_E) of each of G groups, with
    rows summing to 1 and columns to T/E (to relative error ``tol``, or after
    ``max_iters`` rounds), and the rounds the batch ran.

    Each round sets v so that the columns are exact, then u so that the rows
    are; a group stops (its u, v kept) when its columns, disturbed by that
    last step, are within tol; the batch stops when every group has.
    """
    G, T, E = logits_GTE.shape
    logits_GTE = logits_GTE.float()
    log_share = math.log(T / E)
    u_GT1 = torch.zeros(G, T, 1, device=logits_GTE.device)
    v_G1E = torch.zeros(G, 1, E, device=logits_GTE.device)
    done_G11 = torch.zeros(G, 1, 1, dtype=torch.bool, device=logits_GTE.device)
    for rounds in range(1, max_iters + 1):
        v_G1E = torch.where(done_G11, v_G1E, log_share - torch.logsumexp(logits_GTE + u_GT1, dim=1, keepdim=True))
        u_GT1 = torch.where(done_G11, u_GT1, -torch.logsumexp(logits_GTE + v_G1E, dim=2, keepdim=True))
        column_GE = torch.logsumexp(logits_GTE + u_GT1 + v_G1E, dim=1).exp()
        done_G11 |= ((column_GE * E / T - 1).abs().amax(-1) <= tol)[:, None, None]
        if done_G11.all():
            break
    return logits_GTE + u_GT1 + v_G1E, rounds


def gate_weights(logits_TE: Tensor, gate: str, k: int) -> Tensor:
    """The combine weight of every expert: sigmoid(logit) or softmax(logits);
    ``auto`` is sigmoid for k = 1 and softmax for k > 1 (Megatron-LM)."""
    if gate == "auto":
        gate = "sigmoid" if k == 1 else "softmax"
    return torch.sigmoid(logits_TE) if gate == "sigmoid" else torch.softmax(logits_TE, dim=-1)


@ROUTERS.register("sbase", SBaseConfig)
class SBaseRouter(Router):
    uses_other_tokens = True  # in training: the plan's column sums

    def __init__(self, cfg: SBaseConfig, d_model: int, num_experts: int, data: DataStats) -> None:
        super().__init__(cfg, d_model, num_experts, data)
        self.sinkhorn_work = TrainingWork("sinkhorn")

    def training_only_flops_per_token(self, stats: object) -> dict[str, float]:
        return self.sinkhorn_work.per_token()

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        logits_TE = self.gate_logits(x_TD)
        choose_by_TE = logits_TE
        if self.training:
            plan_GTE, rounds = sinkhorn_plan(token_groups(logits_TE, ctx.num_groups),
                                             self.cfg.sinkhorn_iters, self.cfg.sinkhorn_tol)
            choose_by_TE = plan_GTE.flatten(0, 1)
            # Three passes over the [T, E] scores a round: two normalizations and the check.
            self.sinkhorn_work.add(3 * rounds * logits_TE.numel(), logits_TE.shape[0])
        expert_TK = choose_by_TE.topk(self.cfg.k, dim=-1).indices
        gate_TE = gate_weights(logits_TE, self.cfg.gate, self.cfg.k)
        routing = sparse_from_topk(gate_TE, gate_TE.gather(1, expert_TK), expert_TK)
        routing.respects_capacity = not self.training and self.cfg.eval_dropless
        return RouterOutput(routing, logits_TE)
