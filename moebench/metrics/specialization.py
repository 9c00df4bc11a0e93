"""How routing aligns with token identity or known clusters."""

from __future__ import annotations

import torch
from torch import Tensor


def _contingency(a_N: Tensor, b_N: Tensor) -> Tensor:
    _, a_idx = torch.unique(a_N, return_inverse=True)
    _, b_idx = torch.unique(b_N, return_inverse=True)
    rows, cols = int(a_idx.max()) + 1, int(b_idx.max()) + 1
    flat = torch.bincount(a_idx * cols + b_idx, minlength=rows * cols)
    return flat.reshape(rows, cols).double()


def cross_counts(cluster_N: Tensor, expert_N: Tensor, num_experts: int) -> Tensor:
    """``[K, E]`` counts of tokens of cluster k routed (top-1) to expert e."""
    K = int(cluster_N.max()) + 1 if cluster_N.numel() else 0
    flat = torch.bincount(cluster_N * num_experts + expert_N, minlength=K * num_experts)
    return flat.reshape(K, num_experts)


def _entropy(p: Tensor) -> Tensor:
    p = p[p > 0]
    return -(p * p.log()).sum()


def normalized_mutual_info(a_N: Tensor, b_N: Tensor) -> float:
    """NMI with arithmetic-mean normalization, 2 I(a;b) / (H(a) + H(b)).

    The same definition as scikit-learn's default; 1 when each value of one
    labelling determines the other, 0 when they are independent.
    """
    if a_N.numel() == 0:
        return float("nan")
    joint = _contingency(a_N, b_N)
    joint /= joint.sum()
    h_a, h_b = _entropy(joint.sum(1)), _entropy(joint.sum(0))
    if h_a + h_b == 0:
        return 1.0
    mutual = h_a + h_b - _entropy(joint.flatten())
    return float(2 * mutual / (h_a + h_b))


def fixed_map_agreement(token_N: Tensor, expert_N: Tensor) -> float:
    """Share of tokens routed to their id's most frequent expert.

    1.0 means routing is a fixed token-to-expert map (context-independent
    specialization, as the OpenMoE analysis found, Xue et al. 2024, sec. 4).
    """
    if token_N.numel() == 0:
        return float("nan")
    joint = _contingency(token_N, expert_N)
    return float(joint.max(1).values.sum() / joint.sum())
