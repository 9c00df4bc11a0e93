"""Group assignments by expert and apply capacity, without a host sync.

The same kept set and order as :func:`moebench.moe.dispatch.plan_dispatch`
(stable sort by expert of the priority order, keep the first C of each
expert), but every output has a size known before the data is seen:
dropped assignments are not compacted away, only moved behind the kept ones
and left out of ``counts_E``. The expert kernels read the first
``counts_E.sum()`` rows and ignore the rest, so the GPU never waits for the
host to learn how many rows survived.

Plain torch ops rather than a Triton kernel: a stable sort of A integers is
cheap next to the GEMMs, and torch's CUDA sort (a CUB radix sort) neither
syncs nor depends on scheduling; ScatterMoE's implementation sorts with torch
too (Tan et al. 2024, arXiv:2403.08245). What must be avoided is ``bincount`` (it reads
the maximum back to size its output) and boolean-mask indexing (data-
dependent output size); ``searchsorted`` on the sorted experts replaces both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Permutation:
    """Assignment indices grouped by expert, kept ones first."""

    order_A: Tensor  # kept assignments grouped by expert (priority order inside), then dropped
    counts_E: Tensor  # kept assignments per expert
    routed_E: Tensor  # assignments per expert before capacity


def sort_by_expert(
    expert_idx_A: Tensor, priority_A: Tensor, num_experts: int, capacity: int | None
) -> Permutation:
    """Stable-sort the priority order ``priority_A`` by expert; keep C per expert.

    ``priority_A`` lists assignment indices most important first (the order
    capacity drops from the back of); ``capacity=None`` keeps everything.
    """
    expert_in_priority_A = expert_idx_A[priority_A]
    by_expert = torch.argsort(expert_in_priority_A, stable=True)
    order_A = priority_A[by_expert]
    sorted_expert_A = expert_in_priority_A[by_expert]
    experts = torch.arange(num_experts + 1, device=expert_idx_A.device)
    bounds_E1 = torch.searchsorted(sorted_expert_A, experts)
    routed_E = bounds_E1.diff()
    if capacity is None:
        return Permutation(order_A, routed_E, routed_E)
    rank_in_expert_A = (
        torch.arange(order_A.numel(), device=order_A.device) - bounds_E1[sorted_expert_A]
    )
    # A stable sort on the drop flag moves the dropped behind the kept and
    # keeps both groups in expert order.
    kept_first = torch.argsort((rank_in_expert_A >= capacity).byte(), stable=True)
    return Permutation(order_A[kept_first], routed_E.clamp(max=capacity), routed_E)
