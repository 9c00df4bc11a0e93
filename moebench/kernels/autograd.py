"""The expert FFN on Triton kernels, forward and backward, as one autograd Function.

Forward, for rows r sorted by expert e(r) (``moebench.moe.experts`` has the
contract and the PyTorch reference):

    z_r = x[t(r)] @ W_in[e]            gather fused into the GEMM's loads
    a_r = act(z_r)                     torch, as in ScatterMoE
    y[t] = sum_r w_r * a_r @ W_out[e]  weight in the epilogue, rows written in
                                       token order, then a segmented sum

Backward, with g_r = dy[t(r)] @ W_out[e]^T (a gather GEMM on transposed weights):

    dw_r     = <a_r @ W_out[e], dy[t(r)]> = <a_r, g_r>: the unweighted expert
               output need not be kept (ScatterMoE keeps it; SonicMoE, Guo et
               al. 2025, arXiv:2512.14080, gets the router gradient this way)
    dz_r     = act'(z_r) * w_r * g_r
    dW_out[e] = sum_r a_r^T (w_r dy[t(r)]),   dW_in[e] = sum_r x[t(r)]^T dz_r
    dx[t]    = sum_r dz_r @ W_in[e]^T         same token-order segmented sum

Only z is saved beyond the inputs; a is recomputed. Rows past
``counts_E.sum()`` (assignments a sync-free dispatch dropped but did not
compact away) are read by no tile and belong to no token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moebench.kernels.combine import TokenOrder, segment_sum, token_order
from moebench.kernels.grouped_gemm import TileSchedule, grouped_mm, grouped_wgrad, tile_schedule
from moebench.moe.experts import activate


class ExpertFFN(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x_TD: Tensor,
        w_in_EDH: Tensor,
        w_out_EFD: Tensor,
        token_idx_R: Tensor,
        counts_E: Tensor,
        weight_R: Tensor,
        activation: str,
    ) -> Tensor:
        token_idx_R, weight_R = token_idx_R.contiguous(), weight_R.contiguous()
        kept_R = torch.arange(token_idx_R.numel(), device=x_TD.device) < counts_E.sum()
        tiles = tile_schedule(counts_E, token_idx_R.numel())
        order = token_order(token_idx_R, kept_R, x_TD.shape[0])
        z_RH = grouped_mm(x_TD, w_in_EDH, tiles, a_idx_R=token_idx_R)
        y_RD = grouped_mm(
            activate(z_RH, activation), w_out_EFD, tiles, c_idx_R=order.slot_R, scale_R=weight_R
        )
        ctx.activation = activation
        ctx.save_for_backward(
            x_TD, w_in_EDH, w_out_EFD, token_idx_R, counts_E, weight_R, kept_R, z_RH, *tiles, *order
        )
        return segment_sum(y_RD, order)

    @staticmethod
    def backward(ctx, dy_TD: Tensor):
        x_TD, w_in_EDH, w_out_EFD, token_idx_R, counts_E, weight_R, kept_R, z_RH, *rest = (
            ctx.saved_tensors
        )
        tiles, order = TileSchedule(*rest[:3]), TokenOrder(*rest[3:])
        g_RF = grouped_mm(dy_TD, w_out_EFD.transpose(1, 2), tiles, a_idx_R=token_idx_R)
        with torch.enable_grad():
            z_RH = z_RH.detach().requires_grad_()
            a_RF = activate(z_RH, ctx.activation)
        (dz_RH,) = torch.autograd.grad(a_RF, z_RH, g_RF * weight_R.to(g_RF.dtype)[:, None])
        a_RF = a_RF.detach()
        # Rows no tile covered hold garbage; their weight gets no gradient.
        dweight_R = torch.where(kept_R, (a_RF * g_RF).sum(-1), 0).to(weight_R.dtype)
        dw_out_EFD = grouped_wgrad(a_RF, dy_TD, counts_E, b_idx_R=token_idx_R, b_scale_R=weight_R)
        dw_in_EDH = grouped_wgrad(x_TD, dz_RH, counts_E, a_idx_R=token_idx_R)
        dx_RD = grouped_mm(dz_RH, w_in_EDH.transpose(1, 2), tiles, c_idx_R=order.slot_R)
        return segment_sum(dx_RD, order), dw_in_EDH, dw_out_EFD, None, None, dweight_R, None


def expert_ffn_triton(
    x_TD: Tensor,
    w_in_EDH: Tensor,
    w_out_EFD: Tensor,
    token_idx_R: Tensor,
    counts_E: Tensor,
    weight_R: Tensor,
    activation: str,
) -> Tensor:
    """:func:`moebench.moe.experts.expert_ffn_torch` on Triton kernels (same contract)."""
    return ExpertFFN.apply(x_TD, w_in_EDH, w_out_EFD, token_idx_R, counts_E, weight_R, activation)
