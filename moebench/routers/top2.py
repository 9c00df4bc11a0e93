"""GShard top-2 gating (Lepikhin et al. 2020, arXiv:2006.16668, section 2.2, Algorithm 1).

gates = softmax(W_g x) in float32. The first expert is each token's argmax;
the second is chosen among the other experts by ``second_policy``:

    all       the second-largest gate;
    sampling  drawn in proportion to the remaining gates;
    random    the second-largest gate, dispatched only with probability
              min(1, g2 / second_threshold) ("random routing", section 2.2).

The two gates are renormalized, g_i / (g1 + g2), before the policy: a token
whose second expert is not dispatched keeps weight g1 / (g1 + g2), as in
Algorithm 1. Algorithm 1's "2 * g2 > rnd" is threshold 0.5; Mesh TensorFlow's
GShard code defaults to 0.2.

Training uses ``second_policy``, evaluation ``second_policy_eval``. The paper
is silent on evaluation; the reference code, Mesh TensorFlow's
``mesh_tensorflow/transformer/moe.py`` (``MoE1D`` and
``set_default_moe_hparams``: ``second_policy_eval="random"``,
``second_threshold_eval=0.2``), applies ``random`` at evaluation too, so that
is the default here, with the one threshold for both. ``all`` dispatches both
experts at evaluation (moebench's behaviour before), so that the scores do
not depend on random draws.

Balance loss on the first choices: Switch's E * sum_e f_e P_e, which is
GShard's l_aux = (1/E) sum_e (c_e/S) m_e scaled by E^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.errors import ConfigError
from moebench.routers import ROUTERS
from moebench.routers.base import (
    Router, RouterConfig, RouterContext, RouterOutput, SparseRouting, sparse_from_topk,
)
from moebench.routers.token_choice import sample_experts
from moebench.routers.top1 import switch_balance_loss

SECOND_POLICIES = ("all", "sampling", "random")


@dataclass
class Top2Config(RouterConfig):
    k: int = 2
    balance_coef: float = 0.01
    second_policy: str = "random"  # all | sampling | random, in training
    second_policy_eval: str = "random"  # the same choices, at evaluation (Mesh TF's default)
    second_threshold: float = 0.2  # "random": dispatch with probability min(1, g2 / threshold)

    def __post_init__(self) -> None:
        if self.k != 2:
            raise ConfigError("router.k", self.k, "2 (top2 routes each token to two experts)")
        if self.second_policy not in SECOND_POLICIES:
            raise ConfigError("router.second_policy", self.second_policy, SECOND_POLICIES)
        if self.second_policy_eval not in SECOND_POLICIES:
            raise ConfigError("router.second_policy_eval", self.second_policy_eval, SECOND_POLICIES)
        if self.second_threshold <= 0:
            raise ConfigError("router.second_threshold", self.second_threshold, "a number > 0")


def top2_routing(probs_TE: Tensor, policy: str, threshold: float) -> SparseRouting:
    """Algorithm 1 on router probabilities: two experts per token, weights
    renormalized over the two, the second chosen (and kept) by ``policy``."""
    expert1_T = probs_TE.argmax(-1)
    others_TE = probs_TE.scatter(1, expert1_T[:, None], 0.0)
    expert2_T = sample_experts(others_TE) if policy == "sampling" else others_TE.argmax(-1)
    expert_TK = torch.stack([expert1_T, expert2_T], dim=1)
    gate_TK = probs_TE.gather(1, expert_TK)
    weight_TK = gate_TK / gate_TK.sum(-1, keepdim=True)
    routing = sparse_from_topk(probs_TE, weight_TK, expert_TK)
    if policy != "random":
        return routing
    T = probs_TE.shape[0]
    keep2_T = torch.rand(T, device=probs_TE.device) < weight_TK[:, 1].detach() / threshold
    keep_A = torch.cat([torch.ones_like(keep2_T), keep2_T])  # choice-major: firsts, then seconds
    r = routing
    return SparseRouting(r.token_idx_A[keep_A], r.expert_idx_A[keep_A], r.weight_A[keep_A],
                         r.choice_A[keep_A], r.score_A[keep_A])


@ROUTERS.register("top2", Top2Config)
class Top2Router(Router):
    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        logits_TE = self.gate_logits(x_TD)
        probs_TE = torch.softmax(logits_TE, dim=-1)
        policy = self.cfg.second_policy if self.training else self.cfg.second_policy_eval
        routing = top2_routing(probs_TE, policy, self.cfg.second_threshold)
        first_T = routing.expert_idx_A[: x_TD.shape[0]]
        aux = {"balance": self.cfg.balance_coef * switch_balance_loss(probs_TE, first_T, ctx.num_groups)}
        return RouterOutput(routing, logits_TE, aux)
