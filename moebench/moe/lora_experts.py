"""Experts that share parameters: one FFN plus a low-rank delta per expert.

The mixture-of-LoRA-experts family: Zadouri et al. 2023, "Pushing Mixture of
Experts to the Limit: Extremely Parameter Efficient MoE for Instruction
Tuning" (arXiv:2309.05444), section 2 (MoLORA): E LoRA adapters (Hu et al.
2021, "LoRA", section 4.1: W + (alpha / r) B A) on one shared FFN. MoLORA
adapts both FFN matrices (official code, github for-ai/parameter-efficient-moe:
``mlp1`` and ``mlp2`` in configs/molora.gin, src/molora.py), so expert e is

    FFN_e(x) = act(x (W1 + s A1_e B1_e)) (W2 + s A2_e B2_e),   s = alpha / r,

in moebench's [in, out] layout (SwiGLU: W1 is [gate | up], 2F wide), with
the reference code's alpha = 16, A_e ~ N(0, 0.02^2) and B_e = 0: every expert
starts as the shared FFN, and rank 0 is exactly it. Parameters: the base
once, D H + F D, plus E r (D + H + F + D) for the deltas. The base trains
with the rest of the model (the paper fine-tunes adapters on a frozen one).

Routing: :class:`LoRAExperts` takes :class:`~moebench.moe.experts.Experts`'
forward signature, so the MoE block's routing, capacity, dispatch and
combine drive it unchanged, under any router (``moe.experts=lora``). MoLORA
itself routes softly: each adapted matrix has its own softmax router and
adds sum_e p_e s B_e A_e x, mixing deltas before the activation.
``router=dense_softmax`` with these experts is the closest soft variant, one
router per layer mixing whole experts, sum_e p_e FFN_e(x): the same
function only where the FFN is linear.

A row's cost: the shared FFN's FLOPs plus 2 r (D + H) + 2 r (F + D) for its
expert's deltas. Suffixes: R rows (grouped by expert), H = F or 2F, r the
rank, I and O a matrix's input and output widths.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from moebench.metrics.flops import ffn_flops, linear_flops, param_count
from moebench.moe.experts import activate


def low_rank_deltas(x_RI: Tensor, counts: list[int], a_EIr: Tensor, b_ErO: Tensor) -> Tensor:
    """``(x A_e) B_e`` for each row, rows grouped by expert (``counts`` per expert)."""
    rows = zip(x_RI.split(counts), a_EIr.unbind(0), b_ErO.unbind(0))
    return torch.cat([x_e @ a @ b for x_e, a, b in rows])


class LoRAExperts(nn.Module):
    """E experts: one shared FFN of width F plus a rank-``rank`` delta per expert on each matrix."""

    def __init__(self, num_experts: int, d_model: int, d_ff: int, activation: str, rank: int,
                 alpha: float = 16.0) -> None:
        super().__init__()
        E, D, F, r = num_experts, d_model, d_ff, rank
        H = 2 * F if activation == "swiglu" else F
        self.activation, self.scale = activation, alpha / r if r else 0.0
        # The shared FFN: the same fan-in init as Experts', and as nn.Linear's.
        self.w_in_DH = nn.Parameter(torch.empty(D, H).uniform_(-1 / math.sqrt(D), 1 / math.sqrt(D)))
        self.w_out_FD = nn.Parameter(torch.empty(F, D).uniform_(-1 / math.sqrt(F), 1 / math.sqrt(F)))
        self.a_in_EDr = nn.Parameter(torch.randn(E, D, r) * 0.02)
        self.b_in_ErH = nn.Parameter(torch.zeros(E, r, H))
        self.a_out_EFr = nn.Parameter(torch.randn(E, F, r) * 0.02)
        self.b_out_ErD = nn.Parameter(torch.zeros(E, r, D))

    @property
    def num_experts(self) -> int:
        return self.a_in_EDr.shape[0]

    def forward(self, x_TD: Tensor, token_idx_R: Tensor, counts_E: Tensor, weight_R: Tensor) -> Tensor:
        """As :func:`~moebench.moe.experts.expert_ffn_torch`: rows sorted by
        expert, rows past ``counts_E.sum()`` ignored; the shared matrices run
        on all rows at once, each expert's deltas on its own rows."""
        counts = counts_E.tolist()
        kept = sum(counts)
        token_idx_R, weight_R = token_idx_R[:kept], weight_R[:kept]
        x_RD = x_TD[token_idx_R]
        delta_RH = low_rank_deltas(x_RD, counts, self.a_in_EDr, self.b_in_ErH)
        a_RF = activate(x_RD @ self.w_in_DH + self.scale * delta_RH, self.activation)
        delta_RD = low_rank_deltas(a_RF, counts, self.a_out_EFr, self.b_out_ErD)
        out_RD = a_RF @ self.w_out_FD + self.scale * delta_RD
        return torch.zeros_like(x_TD).index_add(0, token_idx_R, out_RD * weight_R.to(out_RD.dtype)[:, None])

    def flops(self, rows_E: Tensor) -> float:
        """Per row: the shared FFN, and x A_e, (.) B_e on both matrices."""
        (D, H), (F, _), r = self.w_in_DH.shape, self.w_out_FD.shape, self.a_in_EDr.shape[2]
        deltas = linear_flops(D, r) + linear_flops(r, H) + linear_flops(F, r) + linear_flops(r, D)
        return float(rows_E.sum()) * (ffn_flops(D, F, self.activation) + deltas)

    def params_per_token(self, uses_E: Tensor) -> float:
        """The shared FFN, counted for every token (a token that capacity
        dropped everywhere included), plus the deltas of the experts a token
        uses, expert e ``uses_E[e]`` times on average."""
        base = self.w_in_DH.numel() + self.w_out_FD.numel()
        return base + float(uses_E.sum()) * (param_count(self) - base) / self.num_experts
