"""muMoE's gate: soft, differentiable coefficients over N experts, a = phi(G^T z).

Oldfield et al. 2024, "Multilinear Mixture of Experts: Scalable Expert
Specialization through Factorization" (NeurIPS; arXiv:2402.12550), section 3:
no expert is chosen, nothing is dispatched or dropped; every expert n
contributes a_n W_n^T z, computed in factorized form by the layer this gate
drives (moebench/moe/mumoe.py). So the coefficients are differentiable
everywhere, where a sparse router's discrete choice is not.

As the official code has it (github james-oldfield/muMoE: ``MuMoE.forward``
in MuMoE.py, and experiments/nanoGPT/model.py for GPT-2):

* phi is the 1.5-entmax (Peters et al. 2019, "Sparse Sequence-to-Sequence
  Models", section 3; :func:`entmax15`): convex coefficients that are
  exactly zero outside a support of a few experts. ``router.gate=softmax``
  gives dense coefficients instead.
* The logits G^T z are layer-normalized over the N experts, without affine
  parameters, before phi (GPT-2's ``normalization='ln'``; the code's default,
  BatchNorm, would mix the batch's tokens: a leak in a causal model).
* G starts at zero, so every token starts with uniform coefficients.

The gate runs in float32 whatever the model's dtype, as every router's
(routers/base.py, :func:`~moebench.routers.base.float32_gate`).

Rank (``router.rank``): the paper pre-trains GPT-2 and MLP-Mixer with
parameter-matched muMoE blocks, each at the CP rank that matches the MLP it
replaces (official code: 0.78 d_model at 64 experts and 0.725 d_model at 256
in experiments/nanoGPT/model.py, 0.75 in experiments/mlp_mixer.py). ``null``
applies that rule, :func:`matched_rank`: the largest rank whose layer has no
more parameters than the dense FFN ``router=dense`` builds with the same
``router.params``: ``total``, E FFNs of width d_ff, the parameters of every
other router's layer; ``active``, one, the paper's MLP. An integer sets it.

Suffixes: T tokens, D width, N experts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moebench.config import ModelConfig, MoEConfig
from moebench.errors import ConfigError
from moebench.metrics.flops import ffn_flops, linear_flops
from moebench.moe.mumoe import MuMoELayer, mumoe_param_count
from moebench.routers import ROUTERS
from moebench.routers.base import DataStats, RouterConfig, float32_gate

GATES = ("entmax15", "softmax")
PARAMS = ("total", "active")


@dataclass
class MuMoEConfig(RouterConfig):
    # router.k is unused: every token mixes all N experts, with no capacity.
    num_experts: int = 256  # N (the paper's GPT-2 runs: 64 and 256)
    rank: Optional[int] = None  # the CP rank R; null: matched to router.params (matched_rank)
    params: str = "total"  # total | active: the dense FFN whose parameters the rank matches
    gate: str = "entmax15"  # entmax15 (the paper's phi) | softmax

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise ConfigError("router.num_experts", self.num_experts, "an integer >= 1")
        if self.rank is not None and self.rank < 1:
            raise ConfigError("router.rank", self.rank, "null (parameter-matched) or an integer >= 1")
        if self.params not in PARAMS:
            raise ConfigError("router.params", self.params, PARAMS)
        if self.gate not in GATES:
            raise ConfigError("router.gate", self.gate, GATES)


def entmax15(logits_TN: Tensor) -> Tensor:
    """1.5-entmax over the last dimension (Peters et al. 2019, section 3: the
    thresholded form of alpha-entmax at alpha = 1.5, by their exact
    sort-based algorithm, as the authors' package computes ``entmax15``):
    p = [z / 2 - tau]_+^2 with tau such that p sums to 1.

    The support size k is the largest with tau_k <= z_(k) / 2 (z sorted
    descending), tau_k = mean_k - sqrt((1 - ss_k) / k) over the top k halves
    (mean_k their mean, ss_k their sum of squared deviations). tau is
    differentiated within the support, which is locally constant, so
    autograd gives entmax's exact Jacobian.
    """
    z_TN = logits_TN / 2
    z_TN = z_TN - z_TN.max(-1, keepdim=True).values.detach()
    sorted_TN = z_TN.sort(-1, descending=True).values
    k_N = torch.arange(1, z_TN.shape[-1] + 1, device=z_TN.device, dtype=z_TN.dtype)
    mean_TN = sorted_TN.cumsum(-1) / k_N
    ss_TN = (sorted_TN.square().cumsum(-1) / k_N - mean_TN.square()) * k_N
    delta_TN = (1 - ss_TN) / k_N
    with torch.no_grad():
        tau_TN = mean_TN - delta_TN.clamp_min(0).sqrt()
        support_T1 = (tau_TN <= sorted_TN).sum(-1, keepdim=True)
    tau_T1 = mean_TN.gather(-1, support_T1 - 1) - delta_TN.gather(-1, support_T1 - 1).clamp_min(0).sqrt()
    return (z_TN - tau_T1).clamp_min(0).square()


def matched_rank(cfg: MuMoEConfig, model: ModelConfig, moe: MoEConfig) -> int:
    """The largest CP rank whose layer has at most the parameters of the
    dense FFN of ``router.params`` (one of width d_ff, or moe.num_experts of them)."""
    ffns = moe.num_experts if cfg.params == "total" else 1
    # One multiply-add per weight: an FFN's parameters are half its FLOPs (metrics/flops.py).
    budget = ffns * int(ffn_flops(model.d_model, model.d_ff, model.activation)) // 2
    gate = mumoe_param_count(cfg.num_experts, model.d_model, model.d_ff, model.activation, rank=0)
    per_rank = mumoe_param_count(cfg.num_experts, model.d_model, model.d_ff, model.activation, rank=1) - gate
    if budget - gate < per_rank:
        raise ConfigError("router.num_experts", cfg.num_experts,
                          f"fewer experts, so that the gate ({cfg.num_experts} x {model.d_model}) leaves "
                          f"room for rank 1 within router.params={cfg.params} ({budget} parameters); "
                          "or an explicit router.rank")
    return (budget - gate) // per_rank


@ROUTERS.register("mumoe", MuMoEConfig)
class MuMoEGate(nn.Module):
    """``x_TD -> (coef_TN, logits_TN)``: the coefficients and the normalized
    logits they come from (the routing entropy and stability losses read them).

    Not a :class:`~moebench.routers.base.Router`: its output is no list of
    assignments for the dispatcher but the coefficients of
    :class:`~moebench.moe.mumoe.MuMoELayer`, which :meth:`build_layer` returns.
    """

    # Read by the causality check (moe/grouping.py): a token's coefficients are its own.
    uses_other_tokens = False
    # router.freeze keeps a gate at its random initialization; this gate starts
    # at zero (the official code), so frozen it would mix every expert evenly.
    learns_routing = False

    def __init__(self, cfg: MuMoEConfig, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.weight_ND = nn.Parameter(torch.zeros(cfg.num_experts, d_model))

    @classmethod
    def build_layer(cls, router_cfg: MuMoEConfig, model_cfg: ModelConfig, moe_cfg: MoEConfig,
                    data: DataStats) -> nn.Module:
        rank = matched_rank(router_cfg, model_cfg, moe_cfg) if router_cfg.rank is None else router_cfg.rank
        return MuMoELayer(cls(router_cfg, model_cfg.d_model), router_cfg.num_experts, model_cfg.d_model,
                          model_cfg.d_ff, model_cfg.activation, rank)

    def forward(self, x_TD: Tensor) -> tuple[Tensor, Tensor]:
        logits_TN = F.layer_norm(float32_gate(x_TD, self.weight_ND), (self.cfg.num_experts,))
        if self.cfg.gate == "softmax":
            return torch.softmax(logits_TN, dim=-1), logits_TN
        return entmax15(logits_TN), logits_TN

    def flops_per_token(self) -> dict[str, float]:
        """G^T z; the normalization and phi are elementwise (metrics/flops.py)."""
        N, D = self.weight_ND.shape
        return {"router": linear_flops(D, N)}
