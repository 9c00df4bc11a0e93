"""Rules shared by the token-choice routers (each token picks its own experts).

Not a router itself: the top-k pick with renormalized weights (noisy top-k,
S-BASE, dense softmax) and per-token sampling (GShard's second expert, RL-R's
policy) written once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moebench.routers.base import SparseRouting, sparse_from_topk


def topk_routing(probs_TE: Tensor, k: int, renormalize: bool) -> SparseRouting:
    """Each token's k most probable experts, weighted by their probabilities,
    renormalized to sum to 1 over the k when ``renormalize`` (a softmax over
    the kept logits, as Shazeer et al. 2017 eq. 3)."""
    weight_TK, expert_TK = probs_TE.topk(k, dim=-1)
    if renormalize:
        weight_TK = weight_TK / weight_TK.sum(-1, keepdim=True)
    return sparse_from_topk(probs_TE, weight_TK, expert_TK)


def sample_experts(weights_TE: Tensor) -> Tensor:
    """One expert per token, drawn with probability proportional to its row of
    ``weights_TE`` (non-negative, need not sum to 1).

    Inverse-CDF sampling with one uniform per token, so a token's draw depends
    on its own row alone (and two forward passes under the same seed draw the
    same experts, which the causality probe relies on).
    """
    cdf_TE = weights_TE.detach().cumsum(-1)
    u_T1 = torch.rand_like(cdf_TE[:, :1]) * cdf_TE[:, -1:]
    expert_T = torch.searchsorted(cdf_TE, u_T1, right=True).squeeze(-1)
    return expert_T.clamp(max=weights_TE.shape[-1] - 1)  # u rounding up to the total
