"""PEER's router: product-key retrieval of single-neuron experts.

He 2024, "Mixture of A Million Experts" (arXiv:2407.04153), section 2; the
product keys are those of Lample et al. 2019, "Large Memory Layers with
Product Keys" (arXiv:1907.05242), section 3.2.

N = n^2 experts; expert ``i * n + j`` has the key [c_i; c'_j], a pair of
sub-keys from two tables C, C' of n rows. A query q(x) = [q1; q2] scores each
half against its n sub-keys and keeps the top k of each; the top k of the
k^2 sums q1.c_i + q2.c'_j are then exactly the top k of q.key over all N keys
(if (i, j) is in the overall top k, i must be in q1's top k: otherwise k
rows i' with q1.c_i' > q1.c_i would each give (i', j) a larger score; the
same for j). Cost per head: 2 n (d_key / 2) multiply-adds and k^2 sums, not
N d_key, and no [T, N] tensor is ever formed.

Multi-head retrieval (paper, "Parameter Efficient Experts and Multi-Head
Retrieval"): h query heads share the sub-keys and the pool of experts; each
head keeps its own k experts, weighted by a softmax over its k scores (the
router weights g_i(x) = s(q(x).k_i) of the paper's eqs. 1-3 with s = softmax).

The retrieval (query, sub-key scores, weights) runs in float32 whatever the
model's dtype, as every router's gate does (routers/base.py, Switch's
selective precision): in bfloat16 the scores of close keys tie or swap.

Queries are batch-normalized, as the paper's ablation "query batch
normalization" found to raise expert usage (it follows PKM's query
BatchNorm, Lample et al. 2019, section 3.2). Causality: in training a query's
normalization uses the statistics of the whole batch, a 1/T share of each
other token; evaluation uses the running statistics, so every reported number
depends on the token alone.

Suffixes here: H heads, K experts kept per head (the paper's k), N experts,
Q = sqrt(N) sub-keys per table, P = d_key / 2 (half a query).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moebench.config import ModelConfig, MoEConfig
from moebench.errors import ConfigError
from moebench.metrics.flops import linear_flops
from moebench.moe.peer import PEERLayer
from moebench.routers import ROUTERS
from moebench.routers.base import DataStats, RouterConfig, float32_gate


@dataclass
class PeerConfig(RouterConfig):
    # router.k (the capacity formula's k of FFN-expert routers) is unused: PEER
    # has no capacity; a token uses heads * experts_per_head experts.
    num_experts: int = 128**2  # N, a perfect square; the paper's is 1024**2
    heads: int = 8  # h (the paper's 8)
    experts_per_head: int = 16  # the paper's k (16)
    d_key: int = 32  # query width per head, two halves of d_key / 2

    def __post_init__(self) -> None:
        n = math.isqrt(self.num_experts)
        if self.num_experts < 1 or n * n != self.num_experts:
            raise ConfigError("router.num_experts", self.num_experts, "a perfect square n^2, e.g. 1048576")
        if not 1 <= self.experts_per_head <= n:
            raise ConfigError("router.experts_per_head", self.experts_per_head, f"1..{n} (sqrt(num_experts))")
        if self.heads < 1:
            raise ConfigError("router.heads", self.heads, "an integer >= 1")
        if self.d_key < 2 or self.d_key % 2:
            raise ConfigError("router.d_key", self.d_key, "an even integer >= 2")


def product_key_topk(
    q1_THP: Tensor, q2_THP: Tensor, keys1_QP: Tensor, keys2_QP: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """The top ``k`` of q.[c_i; c'_j] over all Q^2 pairs, by product keys.

    Returns ``score_THK`` (descending, in float32 at least: the scores decide
    the retrieval, :func:`~moebench.routers.base.float32_gate`) and
    ``expert_THK = i * Q + j``.
    """
    Q = keys1_QP.shape[0]
    score1_THK, i_THK = float32_gate(q1_THP, keys1_QP).topk(k, dim=-1)
    score2_THK, j_THK = float32_gate(q2_THP, keys2_QP).topk(k, dim=-1)
    candidates_THKK = score1_THK[..., :, None] + score2_THK[..., None, :]  # (a, b): pair (i_a, j_b)
    score_THK, best_THK = candidates_THKK.flatten(-2).topk(k, dim=-1)
    i_THK = i_THK.gather(-1, torch.div(best_THK, k, rounding_mode="floor"))
    j_THK = j_THK.gather(-1, best_THK % k)
    return score_THK, i_THK * Q + j_THK


@ROUTERS.register("peer", PeerConfig)
class ProductKeyRouter(nn.Module):
    """Query network and sub-keys: ``x_TD -> (weight_THK, expert_THK)``.

    Not a :class:`~moebench.routers.base.Router`: its output is not a list of
    assignments for the dispatcher but weights and indices into the tables of
    :class:`~moebench.moe.peer.PEERLayer`, which :meth:`build_layer` returns.
    """

    # Read by the causality check (moe/grouping.py): the retrieval of a token
    # is its own; see the module docstring for the query BatchNorm.
    uses_other_tokens = False

    def __init__(self, cfg: PeerConfig, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        H, P, Q = cfg.heads, cfg.d_key // 2, math.isqrt(cfg.num_experts)
        self.query = nn.Linear(d_model, H * cfg.d_key, bias=False)
        self.query_norm = nn.BatchNorm1d(H * cfg.d_key)
        # Unit-variance queries against keys of norm ~1 give scores of ~unit scale.
        self.subkeys_2QP = nn.Parameter(torch.randn(2, Q, P) / math.sqrt(P))

    @classmethod
    def build_layer(cls, router_cfg: PeerConfig, model_cfg: ModelConfig, moe_cfg: MoEConfig,
                    data: DataStats) -> nn.Module:
        return PEERLayer(cls(router_cfg, model_cfg.d_model), router_cfg.num_experts, model_cfg.d_model)

    def forward(self, x_TD: Tensor) -> tuple[Tensor, Tensor]:
        T, (H, P) = x_TD.shape[0], (self.cfg.heads, self.cfg.d_key // 2)
        q_TX = self.query_norm(float32_gate(x_TD, self.query.weight))  # X = H * d_key
        q1_THP, q2_THP = q_TX.view(T, H, 2, P).unbind(2)
        score_THK, expert_THK = product_key_topk(
            q1_THP, q2_THP, self.subkeys_2QP[0], self.subkeys_2QP[1], self.cfg.experts_per_head
        )
        return torch.softmax(score_THK, dim=-1), expert_THK

    def flops_per_token(self) -> dict[str, float]:
        """Query projection, 2 sqrt(N) (d_key / 2) sub-key scores per head, k^2 sums per head."""
        H, K, P = self.cfg.heads, self.cfg.experts_per_head, self.cfg.d_key // 2
        Q = self.subkeys_2QP.shape[1]
        return {
            "router": linear_flops(self.query.in_features, self.query.out_features),
            "subkey_scores": H * 2 * linear_flops(P, Q),
            "candidate_merge": float(H * K * K),  # additions, one FLOP each
        }
