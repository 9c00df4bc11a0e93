"""The muMoE layer: N experts mixed softly, computed in CP-factorized form.

Oldfield et al. 2024, "Multilinear Mixture of Experts: Scalable Expert
Specialization through Factorization" (NeurIPS; arXiv:2402.12550), section 3.
The N experts' weight matrices are the slices of one tensor W [N, I, O], and
a token's output mixes all of them with its coefficients a (the gate,
:class:`~moebench.routers.mumoe.MuMoEGate`), eq. 1:

    y = W x_1 a x_2 z = sum_n a_n W_n^T z.

With W in CP form, W[n, i, o] = sum_r U_N[n, r] U_I[i, r] U_O[o, r] (rank R),
the same sum is computed without forming W or any per-expert output, eq. 2:

    y = U_O ((U_N^T a) * (U_I^T z)),

R (N + I + O) multiply-adds per token, where the explicit sum costs N I O.
The largest intermediates are the [T, N] coefficients, never [T, N, D]:
thousands of experts cost a gate of N rows and three matrix products.

The FFN is the paper's MLP replacement (official code, github
james-oldfield/muMoE: ``MuMoE(second_dim=...)`` in
experiments/nanoGPT/model.py and mlp_mixer.py): two such layers, D -> F, the
activation, F -> D, with the same coefficients,

    y = W2(a)^T act(W1(a)^T z),   W(a) = sum_n a_n W_n,

each layer a mixture of linear experts (eq. 1), so the block is the FFN
whose weights are the coefficient-weighted mixture of the experts' weights:
not a mixture of N FFN outputs, the activation sitting between the two
mixtures (SwiGLU: the first layer's output is [gate | up], 2F wide). One
level of experts: the paper's hierarchical muMoE and its tensor-ring
variant (TRmuMoE) are not built here. No biases, as no FFN of
moebench has them (the official code folds one into the input mode).
Initialisation as the official ``CPMuMoE``: expert factors N(1, 1), so that
under uniform coefficients each rank-one term starts near 1; input and
output factors U(+-1/sqrt(fan-in)), with fan-in I and R.

Cost: every token uses every factor, so active = total parameters, and its
FLOPs are the gate plus the six factor products, whatever the coefficients.

Statistics: nothing is dispatched or dropped. An expert's load is its
coefficient mass (``routed_E = kept_E = sum_t a_tn``, as Soft MoE's combine
mass in moe/block.py), so the balance metrics read the soft usage; a token's
experts are those with a nonzero coefficient (entmax's support: sparse; all N
under softmax), and its top expert its largest coefficient.

Suffixes: T tokens, D width, F hidden width (H = F, or 2F for SwiGLU), N
experts, R CP rank, I and O a layer's input and output widths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from moebench.metrics.flops import linear_flops, param_count
from moebench.moe.block import LayerStats
from moebench.moe.experts import activate
from moebench.routers.base import RouterContext, stability_losses

if TYPE_CHECKING:  # the router owns this layer (routers/mumoe.py builds it)
    from moebench.routers.mumoe import MuMoEGate


def cp_mixture(coef_TN: Tensor, x_TI: Tensor, expert_NR: Tensor, in_IR: Tensor, out_OR: Tensor) -> Tensor:
    """``y_TO = sum_n coef_TN[:, n] W_n^T x`` for the CP tensor
    W[n, i, o] = sum_r expert_NR[n, r] in_IR[i, r] out_OR[o, r], in factorized
    form (Oldfield et al. 2024, eq. 2): no tensor over N and I or O is formed."""
    return ((coef_TN.to(expert_NR.dtype) @ expert_NR) * (x_TI @ in_IR)) @ out_OR.t()


def mumoe_param_count(num_experts: int, d_model: int, d_ff: int, activation: str, rank: int) -> int:
    """Parameters of the layer: the gate's N D, and R (N + I + O) for each of
    the two CP layers (D -> H, F -> D)."""
    N, D, F = num_experts, d_model, d_ff
    H = 2 * F if activation == "swiglu" else F
    return N * D + rank * (N + D + H) + rank * (N + F + D)


class CPMixture(nn.Module):
    """One muMoE linear layer: N expert matrices [I, O], the slices of a rank-R
    CP tensor, mixed by each token's coefficients (:func:`cp_mixture`)."""

    def __init__(self, num_experts: int, d_in: int, d_out: int, rank: int) -> None:
        super().__init__()
        self.expert_NR = nn.Parameter(torch.randn(num_experts, rank) + 1.0)
        self.in_IR = nn.Parameter(torch.empty(d_in, rank).uniform_(-d_in**-0.5, d_in**-0.5))
        self.out_OR = nn.Parameter(torch.empty(d_out, rank).uniform_(-rank**-0.5, rank**-0.5))

    def forward(self, coef_TN: Tensor, x_TI: Tensor) -> Tensor:
        return cp_mixture(coef_TN, x_TI, self.expert_NR, self.in_IR, self.out_OR)

    def flops_per_token(self) -> float:
        """U_N^T a, U_I^T z and U_O (.): R (N + I + O) multiply-adds; the
        elementwise product is left out, as everywhere (metrics/flops.py)."""
        (N, R), I, O = self.expert_NR.shape, self.in_IR.shape[0], self.out_OR.shape[0]
        return linear_flops(N, R) + linear_flops(I, R) + linear_flops(R, O)


class MuMoELayer(nn.Module):
    def __init__(self, gate: MuMoEGate, num_experts: int, d_model: int, d_ff: int, activation: str,
                 rank: int) -> None:
        super().__init__()
        self.gate, self.activation = gate, activation
        hidden = 2 * d_ff if activation == "swiglu" else d_ff
        self.up = CPMixture(num_experts, d_model, hidden, rank)
        self.down = CPMixture(num_experts, d_ff, d_model, rank)

    def forward(self, x: Tensor, ctx: RouterContext) -> tuple[Tensor, LayerStats]:
        x_TD = x.reshape(-1, x.shape[-1])
        coef_TN, logits_TN = self.gate(x_TD)
        y_TD = self.down(coef_TN, activate(self.up(coef_TN, x_TD), self.activation))
        stats = coefficient_stats(coef_TN)
        stats.logits_TE = logits_TN.detach()
        stats.aux_losses = stability_losses(logits_TN, self.gate.cfg)
        return y_TD.reshape(x.shape), stats

    def flops_per_token(self, stats: LayerStats | None) -> dict[str, float]:
        """The gate, and the two CP layers; the same for every token."""
        experts = self.up.flops_per_token() + self.down.flops_per_token()
        return {**self.gate.flops_per_token(), "experts": experts}

    def active_params(self, stats: LayerStats | None) -> float:
        """All of them: every token's output mixes every expert."""
        return float(param_count(self))


def coefficient_stats(coef_TN: Tensor) -> LayerStats:
    """Loads as coefficient mass, a token's experts its nonzero coefficients; nothing dropped."""
    coef_TN = coef_TN.detach()
    mass_N = coef_TN.sum(0)
    return LayerStats(
        routed_E=mass_N,
        kept_E=mass_N,
        expert_rows=coef_TN.shape[0],  # the factorized layers process each token once
        dropped=0,
        experts_per_token_T=(coef_TN > 0).sum(-1),
        top_expert_T=coef_TN.argmax(-1),
    )
