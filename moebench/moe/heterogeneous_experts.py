"""Heterogeneous experts: E expert FFNs of different widths in one layer.

Wang et al. 2024, "HMoE: Heterogeneous Mixture of Experts for Language
Modeling" (arXiv:2408.10681): experts differ in hidden size, so that a
router can send easy tokens to small experts and hard ones to large experts.
Here the widths are given, one per expert (``moe.expert_widths``, e.g. the
same total as E experts of width d_ff, spread unevenly); HMoE's own size
distributions and its parameter-penalty loss, which pushes tokens towards
small experts, are not reproduced (moebench compares routers, and the
suite's load-balance losses are the routers' own).

Each expert runs at its own width on its own rows (the grouped forward of
moe/experts.py, one matmul pair per expert), so the cost is counted as
executed: expert e's rows times the FLOPs of an FFN of width ``w_e``, and a
token's active parameters are those of the experts it used. Suffixes: R
rows (grouped by expert), H = F or 2F (SwiGLU's [gate | up]), F an
expert's own width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from moebench.metrics.flops import ffn_flops
from moebench.moe.experts import grouped_ffn


class HeterogeneousExperts(nn.Module):
    """len(widths) expert FFNs, expert e of width ``widths[e]``, applied to rows grouped by expert."""

    def __init__(self, d_model: int, widths: list[int], activation: str) -> None:
        super().__init__()
        D, self.activation, self.widths = d_model, activation, list(widths)
        hidden = [2 * F if activation == "swiglu" else F for F in widths]
        # Experts' init, per expert: nn.Linear's default fan-in scaling.
        self.w_in_DH = nn.ParameterList(
            nn.Parameter(torch.empty(D, H).uniform_(-1 / math.sqrt(D), 1 / math.sqrt(D))) for H in hidden)
        self.w_out_FD = nn.ParameterList(
            nn.Parameter(torch.empty(F, D).uniform_(-1 / math.sqrt(F), 1 / math.sqrt(F))) for F in widths)

    @property
    def num_experts(self) -> int:
        return len(self.widths)

    def flops(self, rows_E: Tensor) -> float:
        """Forward FLOPs of ``rows_E[e]`` rows through expert e, at its own width, for every e."""
        D = self.w_in_DH[0].shape[0]
        return sum(n * ffn_flops(D, F, self.activation) for n, F in zip(rows_E.tolist(), self.widths))

    def params_per_token(self, uses_E: Tensor) -> float:
        """Parameters of the experts a token uses, expert e ``uses_E[e]`` times on average."""
        experts = zip(uses_E.tolist(), self.w_in_DH, self.w_out_FD)
        return sum(uses * (w_in.numel() + w_out.numel()) for uses, w_in, w_out in experts)

    def forward(self, x_TD: Tensor, token_idx_R: Tensor, counts_E: Tensor, weight_R: Tensor) -> Tensor:
        """As :func:`~moebench.moe.experts.expert_ffn_torch`: rows sorted by
        expert, rows past ``counts_E.sum()`` ignored."""
        return grouped_ffn(x_TD, list(self.w_in_DH), list(self.w_out_FD), token_idx_R, counts_E, weight_R,
                           self.activation)
