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

A training step whose cost does not grow with N (beyond the router's sqrt(N)
sub-keys): it reads T H K rows of each table, so nothing else in it may
touch all N rows: the tables' gradients are sparse tensors
of the retrieved rows (a dense [N, D] gradient would be written, read by the
NaN check and clipping, and swept by AdamW every step), and
:meth:`PEERLayer.sparse_parameters` hands the tables to lazy Adam
(moebench/optim.py), which updates only those rows, without weight decay.
The forward gathers the rows of u and dots them with x in one batched
matrix-vector product, and sums the rows of v weighted by g gelu(u_i . x)
with ``embedding_bag`` (gather and reduction in one pass).

Speed: each expert is one neuron, so the layer's FLOPs are gathers and
dot products of single rows, bound by memory rather than arithmetic: there
is no matrix product to run at a GEMM's rate. It reaches 0.03-0.16x of the
equal-FLOPs dense model's FLOP/s (results/bench/train_step_cpu.json), and
its step grows with N through the distinct rows lazy Adam updates (all of
a 65,536-row table, about 230,000 of 1,048,576 at T H K = 262,144
retrievals) and the cache misses of gathers from a larger table
(results/bench/peer_cpu.json).

Suffixes: T tokens, D width, H heads, K experts per head, A = H K, N experts,
R = T H K retrievals, U distinct rows retrieved.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moebench.metrics.flops import linear_flops, param_count
from moebench.moe.block import LayerStats
from moebench.optim import coalesced
from moebench.routers.base import RouterContext

if TYPE_CHECKING:  # the router owns this layer (routers/peer.py builds it)
    from moebench.routers.peer import ProductKeyRouter


class RetrievedRows:
    """The table rows a batch retrieved, ``rows_R`` (R = T H K), and, computed
    once when a backward first asks, the distinct rows and each retrieval's
    slot among them: one sort serves the gradients of both tables."""

    def __init__(self, rows_R: Tensor) -> None:
        self.rows_R = rows_R

    @functools.cached_property
    def distinct(self) -> tuple[Tensor, Tensor]:
        """(rows_U ascending, slot_R) with rows_R == rows_U[slot_R]."""
        return torch.unique(self.rows_R, return_inverse=True)

    def gradient(self, grad_RD: Tensor, num_rows: int) -> Tensor:
        """The sparse [num_rows, D] gradient of a gather ``table[rows_R]``:
        repeated rows summed, coalesced, and flagged so.

        A dense table gradient would write all N rows every step; this one
        holds the retrieved rows only, as gradient clipping and the optimizer
        (moebench/optim.py, LazyAdam) read it.
        """
        rows_U, slot_R = self.distinct
        grad_UD = grad_RD.new_zeros(rows_U.shape[0], grad_RD.shape[1]).index_add_(0, slot_R, grad_RD)
        return torch.sparse_coo_tensor(rows_U[None], grad_UD, (num_rows, grad_RD.shape[1]),
                                       is_coalesced=True, check_invariants=False)


class GatherRows(torch.autograd.Function):
    """``table_ND[rows_R]`` with a sparse, coalesced gradient for the table."""

    @staticmethod
    def forward(ctx, table_ND: Tensor, rows: RetrievedRows) -> Tensor:
        ctx.rows, ctx.num_rows = rows, table_ND.shape[0]
        return table_ND.index_select(0, rows.rows_R)

    @staticmethod
    def backward(ctx, grad_RD: Tensor) -> tuple[Tensor, None]:
        return ctx.rows.gradient(grad_RD, ctx.num_rows), None


class WeightedRowSum(torch.autograd.Function):
    """``y_TD = sum_a coef_TA[t, a] table_ND[rows_R[t A + a]]`` by ``F.embedding_bag``:
    the gather and the weighted reduction in one pass, no [T, A, D] tensor in
    the forward; a sparse, coalesced gradient for the table."""

    @staticmethod
    def forward(ctx, table_ND: Tensor, rows: RetrievedRows, coef_TA: Tensor) -> Tensor:
        ctx.save_for_backward(table_ND, coef_TA)
        ctx.rows = rows
        return F.embedding_bag(rows.rows_R.view(coef_TA.shape), table_ND, per_sample_weights=coef_TA,
                               mode="sum")

    @staticmethod
    def backward(ctx, grad_TD: Tensor) -> tuple[Tensor, None, Tensor]:
        table_ND, coef_TA = ctx.saved_tensors
        row_TAD = table_ND.index_select(0, ctx.rows.rows_R).view(*coef_TA.shape, -1)
        grad_coef_TA = torch.bmm(row_TAD, grad_TD[:, :, None]).squeeze(-1)
        grad_RD = (coef_TA[:, :, None] * grad_TD[:, None, :]).flatten(0, 1)
        return ctx.rows.gradient(grad_RD, table_ND.shape[0]), None, grad_coef_TA


def peer_output(x_TD: Tensor, weight_THK: Tensor, expert_THK: Tensor, down_ND: Tensor,
                up_ND: Tensor) -> Tensor:
    """sum_h sum_k g * gelu(u_i . x) * v_i over each token's retrieved experts.

    The A = H K retrieved rows of u are gathered and dotted with x by one
    batched matrix-vector product; the rows of v are gathered and summed,
    weighted by g gelu(u_i . x), by ``embedding_bag``. Both tables get sparse
    gradients of the retrieved rows only (:meth:`RetrievedRows.gradient`).
    """
    T, A = expert_THK.shape[0], expert_THK[0].numel()
    rows = RetrievedRows(expert_THK.reshape(T * A))
    u_TAD = GatherRows.apply(down_ND, rows).view(T, A, -1)
    h_TA = F.gelu(torch.bmm(u_TAD, x_TD[:, :, None]).squeeze(-1))
    coef_TA = weight_THK.reshape(T, A).to(h_TA.dtype) * h_TA
    return WeightedRowSum.apply(up_ND, rows, coef_TA.to(up_ND.dtype))


def keep_coalesced(table: nn.Parameter) -> None:
    """Flag the table's gradient coalesced again after autograd stored it
    (:func:`moebench.optim.coalesced`): else every norm of it would sort its rows."""
    table.grad = coalesced(table.grad)


class PEERLayer(nn.Module):
    def __init__(self, router: ProductKeyRouter, num_experts: int, d_model: int) -> None:
        super().__init__()
        self.router = router
        # Fan-in scaling as nn.Linear's: u_i . x has unit scale for normalized x.
        self.down_ND = nn.Parameter(torch.randn(num_experts, d_model) / math.sqrt(d_model))
        self.up_ND = nn.Parameter(torch.randn(num_experts, d_model) / math.sqrt(d_model))
        for table in (self.down_ND, self.up_ND):  # the NaN check, clipping and LazyAdam read them as is
            table.register_post_accumulate_grad_hook(keep_coalesced)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The u and v tables: their gradients are sparse (the retrieved rows),
        so ``train.make_optimizer`` gives them lazy Adam (moebench/optim.py),
        which reads and writes those rows only, not AdamW over all N rows."""
        return [self.down_ND, self.up_ND]

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
