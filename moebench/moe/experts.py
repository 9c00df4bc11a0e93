"""Expert FFNs with batched weights, and the grouped forward that runs them.

Weights are stored batched, ``w_in_EDH`` and ``w_out_EFD`` (H = F, or 2F for
SwiGLU whose gate and up projections are concatenated), so one grouped
computation serves every expert. :func:`expert_ffn` is the single seam
between "who routes" and "what the experts compute": rows sorted by expert
go in, a weighted sum per token comes out. Two implementations share that
contract, chosen by ``moe.impl``: the Triton kernels of ``moebench.kernels``
(CUDA tensors) and the PyTorch version here (CPU, and the oracle the Triton
kernels are tested against).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moebench.errors import ConfigError
from moebench.metrics.flops import ffn_flops, param_count

ACTIVATIONS = ("gelu", "swiglu")
IMPLS = ("auto", "torch", "triton")


def activate(h: Tensor, activation: str) -> Tensor:
    """GELU (Hendrycks & Gimpel 2016), or SwiGLU (Shazeer 2020, eq. 6) on [gate | up]."""
    if activation == "gelu":
        return F.gelu(h)
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def expert_ffn_torch(
    x_TD: Tensor,
    w_in_EDH: Tensor,
    w_out_EFD: Tensor,
    token_idx_R: Tensor,
    counts_E: Tensor,
    weight_R: Tensor,
    activation: str,
) -> Tensor:
    """Reference grouped expert forward: one matmul pair per expert.

    Rows ``r`` are sorted by expert; the first ``counts_E[0]`` belong to
    expert 0, and so on. Returns ``y_TD`` with
    ``y[t] = sum_{r: token_idx_R[r] = t} weight_R[r] * FFN_{e(r)}(x[t])``;
    tokens with no row get zeros. Rows past ``counts_E.sum()`` belong to no
    expert and are ignored (dropped assignments that a sync-free dispatch,
    :func:`moebench.moe.dispatch.sort_by_expert`, leaves behind the kept ones).
    """
    # unbind views rather than per-expert ``w[e]``: their backward is one
    # stack, where indexing would materialise a full-size gradient per expert.
    return grouped_ffn(x_TD, w_in_EDH.unbind(0), w_out_EFD.unbind(0), token_idx_R, counts_E,
                       weight_R, activation)


def grouped_ffn(
    x_TD: Tensor,
    w_in_DH: Sequence[Tensor],
    w_out_FD: Sequence[Tensor],
    token_idx_R: Tensor,
    counts_E: Tensor,
    weight_R: Tensor,
    activation: str,
) -> Tensor:
    """:func:`expert_ffn_torch` with expert e's matrices ``w_in_DH[e]``,
    ``w_out_FD[e]``, of any width each (moe/heterogeneous_experts.py)."""
    counts = counts_E.tolist()
    kept = sum(counts)
    token_idx_R, weight_R = token_idx_R[:kept], weight_R[:kept]
    # split views and one cat rather than slice assignment ``out[a:b] =``,
    # whose backward materialises a full-size gradient per expert (over 10x
    # slower on CPU).
    rows = zip(x_TD[token_idx_R].split(counts), w_in_DH, w_out_FD)
    out_RD = torch.cat([activate(x_e @ w_in, activation) @ w_out for x_e, w_in, w_out in rows])
    y_TD = torch.zeros_like(x_TD)
    return y_TD.index_add(0, token_idx_R, out_RD * weight_R.to(out_RD.dtype)[:, None])


def resolve_impl(impl: str, device: torch.device) -> str:
    """``moe.impl`` -> the implementation that runs on tensors of ``device``."""
    if impl not in IMPLS:
        raise ConfigError("moe.impl", impl, IMPLS)
    if impl == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if impl == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(
            "moe.impl",
            impl,
            "auto or torch on CPU; triton needs CUDA tensors "
            "(or TRITON_INTERPRET=1 set before triton is imported, for tests)",
        )
    return impl


def expert_ffn(
    x_TD: Tensor,
    w_in_EDH: Tensor,
    w_out_EFD: Tensor,
    token_idx_R: Tensor,
    counts_E: Tensor,
    weight_R: Tensor,
    activation: str,
    impl: str = "auto",
) -> Tensor:
    """The grouped expert forward of :func:`expert_ffn_torch`, by ``moe.impl``."""
    args = (x_TD, w_in_EDH, w_out_EFD, token_idx_R, counts_E, weight_R, activation)
    if resolve_impl(impl, x_TD.device) == "triton":
        from moebench.kernels import expert_ffn_triton  # imported late: triton is optional

        return expert_ffn_triton(*args)
    return expert_ffn_torch(*args)


class Experts(nn.Module):
    """E expert FFNs of width F, applied to rows grouped by expert."""

    def __init__(
        self, num_experts: int, d_model: int, d_ff: int, activation: str, impl: str = "auto"
    ) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ConfigError("moe.impl", impl, IMPLS)
        hidden = 2 * d_ff if activation == "swiglu" else d_ff
        self.activation = activation
        self.impl = impl  # moe.impl: auto | torch | triton
        self.w_in_EDH = nn.Parameter(torch.empty(num_experts, d_model, hidden))
        self.w_out_EFD = nn.Parameter(torch.empty(num_experts, d_ff, d_model))
        # The same init as nn.Linear's default fan-in scaling, per expert.
        nn.init.uniform_(self.w_in_EDH, -1 / math.sqrt(d_model), 1 / math.sqrt(d_model))
        nn.init.uniform_(self.w_out_EFD, -1 / math.sqrt(d_ff), 1 / math.sqrt(d_ff))

    @property
    def num_experts(self) -> int:
        return self.w_in_EDH.shape[0]

    def flops(self, rows_E: Tensor) -> float:
        """Forward FLOPs of ``rows_E[e]`` dispatched rows (assignments, or slots) through expert e."""
        _, d_ff, d_model = self.w_out_EFD.shape
        return float(rows_E.sum()) * ffn_flops(d_model, d_ff, self.activation)

    def params_per_token(self, uses_E: Tensor) -> float:
        """Parameters of the experts a token uses, expert e ``uses_E[e]`` times
        on average; per expert held here: all of them, or this process's share
        under expert parallelism (moe/expert_parallel.py)."""
        return float(uses_E.sum()) * param_count(self) / self.w_in_EDH.shape[0]

    def forward(
        self, x_TD: Tensor, token_idx_R: Tensor, counts_E: Tensor, weight_R: Tensor
    ) -> Tensor:
        return expert_ffn(
            x_TD,
            self.w_in_EDH,
            self.w_out_EFD,
            token_idx_R,
            counts_E,
            weight_R,
            self.activation,
            self.impl,
        )


class FeedForward(nn.Module):
    """A plain FFN: the dense baseline and the non-MoE layers."""

    def __init__(self, d_model: int, d_ff: int, activation: str) -> None:
        super().__init__()
        hidden = 2 * d_ff if activation == "swiglu" else d_ff
        self.activation = activation
        self.w_in = nn.Linear(d_model, hidden, bias=False)
        self.w_out = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(activate(self.w_in(x), self.activation))
