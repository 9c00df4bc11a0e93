"""Top-p (dynamic-k) routing (Huang et al. 2024, "Harder Tasks Need More
Experts: Dynamic Routing in MoE Models", arXiv:2403.07652, section "Top-P Routing").

    P = softmax(W_r x)                                  float32, over all E experts
    t = argmin_k  sum_{j <= k} P_{I_j} >= p             I: the experts by descending P
    MoE(x) = sum_{j <= t} P_{I_j} e_{I_j}(x)             weights not renormalized

A confident token (one large P) takes one expert, an unsure one several: the
number of experts per token is learned, not fixed. Two auxiliary losses:

    dynamic  beta * mean_t (-sum_i P_i log P_i)          ("Dynamic Loss"): without it
             the router gains compute by spreading P (a uniform P takes about p * E experts)
    balance  alpha * E * sum_i f_i Q_i                   ("Load Balance Loss"): f_i the
             share of tokens selecting expert i (a token may select several), Q_i the
             mean P_i

with the paper's p = 0.4, alpha = 1e-2, beta = 1e-4. The dynamic loss is the
routing-entropy regularizer every router has (``router.entropy_coef``, whose
default is beta here); its key in the aux losses is ``entropy``.

Decisions, from the paper's text and its reference implementation
(github.com/ZhenweiAn/Dynamic_MoE, ``modeling/modeling_moe.py``:
``top_p_sampling_batched_all_sequence``, ``SwitchMLP``; inference code only):
* the prefix ends where its sum *reaches* p (the paper's >=); the reference
  code stops where it exceeds p, which differs only when a prefix sums to p
  exactly (and it keeps one expert when no prefix exceeds p: at p = 1);
* no capacity: the reference code sends every token to all of its experts, so
  top_p is dropless by default (``router.dropless``), and then each token decides
  alone: causal, one routing group (moe/grouping.py). ``router.dropless=false``
  applies the moe capacity with C = ceil(cf * k * T / E), ``router.k`` (2, the
  top-2 baseline whose compute the paper's model undercuts) sizing it; a token's
  later choices then go after every token's first, so ``moe.routing_groups=auto``
  groups by position on a causal task, as for top-2.

The experts-per-token distribution is in every record: ``experts_per_token_share``
(the share of tokens reaching 0, 1, 2, ... experts; moebench/metrics/routing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moebench.errors import ConfigError
from moebench.routers import ROUTERS
from moebench.routers.base import (
    Router, RouterConfig, RouterContext, RouterOutput, SparseRouting, token_groups,
)


@dataclass
class TopPConfig(RouterConfig):
    k: int = 2  # the capacity's experts per token, under router.dropless=false only
    p: float = 0.4  # the threshold on the cumulative probability (the paper's; top_p_threshold there)
    balance_coef: float = 0.01  # alpha
    entropy_coef: float = 1e-4  # beta: the dynamic loss
    dropless: bool = True  # no capacity, as the reference implementation

    def __post_init__(self) -> None:
        if not 0 < self.p <= 1:
            raise ConfigError("router.p", self.p, "a number in (0, 1]")
        if self.k < 2:  # see the module docstring: a token may make more than one choice
            raise ConfigError("router.k", self.k, "2..moe.num_experts (top_p's capacity, "
                                                  "under router.dropless=false, as top-k's with k >= 2)")


def top_p_routing(probs_TE: Tensor, p: float) -> SparseRouting:
    """Each token's smallest set of most probable experts whose probabilities
    sum to at least ``p``, each weighted by its probability.

    The j-th expert of a token, by descending probability, is taken when the
    experts before it sum to less than p: the first always, and the last the
    one that brings the sum to p. An expert of probability 0 adds nothing to the
    output and is never taken, so p = 1 takes every expert of nonzero probability
    (but one below the float32 resolution of the running sum, about 6e-8).
    Assignments are listed choice-major (all first choices, then second ...), as
    :func:`moebench.routers.base.sparse_from_topk` lists them.
    """
    sorted_TE, expert_TE = probs_TE.sort(dim=-1, descending=True, stable=True)
    before_TE = nn.functional.pad(sorted_TE.detach().cumsum(-1)[:, :-1], (1, 0))
    taken_TE = (before_TE < p) & (sorted_TE.detach() > 0)
    choice_A, token_idx_A = taken_TE.t().nonzero(as_tuple=True)
    weight_A = sorted_TE[token_idx_A, choice_A]
    return SparseRouting(token_idx_A, expert_TE[token_idx_A, choice_A], weight_A, choice_A,
                         weight_A.detach())


def balance_loss(probs_TE: Tensor, routing: SparseRouting, num_groups: int = 1) -> Tensor:
    """E * sum_i f_i Q_i with f_i counting every expert a token selects, in each
    routing group, averaged over the groups; Switch's loss (routers/top1.py)
    when every token selects one expert."""
    (T, E), G = probs_TE.shape, num_groups
    group_A = routing.token_idx_A // (T // G)
    selected_GE = torch.bincount(group_A * E + routing.expert_idx_A, minlength=G * E).view(G, E)
    f_GE = selected_GE.to(probs_TE.dtype) / (T // G)
    Q_GE = token_groups(probs_TE, G).mean(1)
    return E * torch.dot(f_GE.flatten(), Q_GE.flatten()) / G


@ROUTERS.register("top_p", TopPConfig)
class TopPRouter(Router):
    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        logits_TE = self.gate_logits(x_TD)
        probs_TE = torch.softmax(logits_TE, dim=-1)
        routing = top_p_routing(probs_TE, self.cfg.p)
        aux = {"balance": self.cfg.balance_coef * balance_loss(probs_TE, routing, ctx.num_groups)}
        return RouterOutput(routing, logits_TE, aux)
