"""The PEER layer: N single-neuron experts retrieved by product keys.

He 2024, "Mixture of A Million Experts" (arXiv:2407.04153), section 2,
"Parameter Efficient Experts and Multi-Head Retrieval": expert i is one
hidden neuron, e_i(x) = act(u_i . x) v_i, and the layer's output is

    f(x) = sum_{heads h} sum_{i in I_h(x)} g_i(x) e_i(x)

with I_h(x) and the softmax weights g_i(x) from
:class:`~moebench.routers.peer.ProductKeyRouter`. The down vectors u_i and up
vectors v_i are tables of N rows; a token reads only its H * K rows of each.
``act`` is GELU, the models' default FFN activation, whatever
``model.activation`` says (SwiGLU needs two hidden units per neuron).

Every table row is an expert, so the layer reports per-expert usage over the
N experts in ``LayerStats.routed_E``; the usual balance metrics then apply.

Suffixes: T tokens, D width, H heads, K experts per head, N experts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moebench.metrics.flops import linear_flops, param_count
from moebench.moe.block import LayerStats
from moebench.routers.base import RouterContext

if TYPE_CHECKING:  # the router owns this layer (routers/peer.py builds it)
    from moebench.routers.peer import ProductKeyRouter


def peer_output(x_TD: Tensor, weight_THK: Tensor, expert_THK: Tensor, down_ND: Tensor,
                up_ND: Tensor) -> Tensor:
    """sum_h sum_k g * gelu(u_i . x) * v_i over each token's retrieved experts."""
    u_THKD = F.embedding(expert_THK, down_ND)
    h_THK = F.gelu(torch.einsum("thkd,td->thk", u_THKD, x_TD))
    v_THKD = F.embedding(expert_THK, up_ND)
    return torch.einsum("thk,thkd->td", weight_THK.to(h_THK.dtype) * h_THK, v_THKD)


class PEERLayer(nn.Module):
    def __init__(self, router: ProductKeyRouter, num_experts: int, d_model: int) -> None:
        super().__init__()
        self.router = router
        # Fan-in scaling as nn.Linear's: u_i . x has unit scale for normalized x.
        self.down_ND = nn.Parameter(torch.randn(num_experts, d_model) / math.sqrt(d_model))
        self.up_ND = nn.Parameter(torch.randn(num_experts, d_model) / math.sqrt(d_model))

    def forward(self, x: Tensor, ctx: RouterContext) -> tuple[Tensor, LayerStats]:
        x_TD = x.reshape(-1, x.shape[-1])
        weight_THK, expert_THK = self.router(x_TD)
        y_TD = peer_output(x_TD, weight_THK, expert_THK, self.down_ND, self.up_ND)
        return y_TD.reshape(x.shape), retrieval_stats(weight_THK, expert_THK, self.down_ND.shape[0])

    def flops_per_token(self, stats: LayerStats | None) -> dict[str, float]:
        """The router's query, sub-key and merge FLOPs, plus u_i . x and g act v_i
        (2 D multiply-adds) for each retrieved expert."""
        assert stats is not None
        T, D = stats.experts_per_token_T.numel(), self.down_ND.shape[1]
        flops = self.router.flops_per_token()
        flops["experts"] = stats.expert_rows / T * 2 * linear_flops(D, 1)
        return flops

    def active_params(self, stats: LayerStats | None) -> float:
        """Query network and all sub-keys (every token scores them all), and
        u_i, v_i of the experts a token retrieves."""
        assert stats is not None
        mean_experts = float(stats.experts_per_token_T.float().mean())
        return param_count(self.router) + mean_experts * 2 * self.down_ND.shape[1]


def retrieval_stats(weight_THK: Tensor, expert_THK: Tensor, num_experts: int) -> LayerStats:
    """Usage counts over the N experts; nothing is ever dropped."""
    T = expert_THK.shape[0]
    usage_N = torch.bincount(expert_THK.flatten(), minlength=num_experts)
    expert_TA, weight_TA = expert_THK.flatten(1), weight_THK.detach().flatten(1)  # A = H * K
    return LayerStats(
        routed_E=usage_N,
        kept_E=usage_N,
        expert_rows=expert_THK.numel(),
        dropped=0,
        experts_per_token_T=torch.full((T,), expert_TA.shape[1], device=expert_THK.device),
        top_expert_T=expert_TA.gather(1, weight_TA.argmax(1, keepdim=True)).squeeze(1),
    )
