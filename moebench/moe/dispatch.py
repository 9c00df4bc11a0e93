"""Dispatch: capacity, drop priority and drop accounting, once for all routers.

Capacity follows GShard / Switch Transformer: ``C = ceil(cf * k * T / E)``
(Fedus et al. 2021, eq. 3 with k = 1; Lepikhin et al. 2020 for k = 2).
Overflow is dropped by priority: first choices before second choices, and
within a choice rank by token position ("position", the Switch default) or by
router score ("score", batch-prioritized routing, Riquelme et al. 2021,
section 4). The kept assignments come out stably sorted by expert, ready for
the grouped expert forward. With G routing groups (``RouterContext.num_groups``)
the capacity applies to each group's share of an expert: the sort key is
(expert, group), so one sort serves all groups and an expert's rows stay
together.

:func:`sort_by_expert` does the grouping and capacity without a host sync
(every output size is known before the data is seen), so the Triton path can
use it on the GPU as is; :func:`plan_dispatch` compacts its result for the
PyTorch path and adds the drop accounting.

Plain torch ops rather than a Triton kernel: a stable sort of A integers is
cheap next to the GEMMs, and torch's CUDA sort (a CUB radix sort) neither
syncs nor depends on scheduling; ScatterMoE sorts with torch too (Tan et al.
2024, arXiv:2403.08245). What must be avoided is ``bincount`` (it reads the
maximum back to size its output) and boolean-mask indexing (data-dependent
output size); ``searchsorted`` on the sorted experts replaces both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.routers.base import SparseRouting

DROP_POLICIES = ("position", "score")


@dataclass
class DispatchPlan:
    """Kept assignments sorted by expert, and what was dropped on the way."""

    token_idx_R: Tensor  # kept rows, grouped by expert
    expert_idx_R: Tensor
    weight_R: Tensor
    counts_E: Tensor  # kept rows per expert
    routed_E: Tensor  # assignments per expert before capacity
    dropped: int  # assignments dropped by capacity
    experts_per_token_T: Tensor  # kept assignments per token
    dropped_T: Tensor  # assignments of each token dropped by capacity


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


def capacity(num_tokens: int, num_experts: int, k: int, capacity_factor: float) -> int:
    """Expert capacity C = ceil(cf * k * T / E) (Switch eq. 3, GShard)."""
    return math.ceil(capacity_factor * k * num_tokens / num_experts)


def plan_dispatch(
    routing: SparseRouting,
    num_tokens: int,
    num_experts: int,
    capacity_per_expert: int | None,
    drop_policy: str = "position",
    num_groups: int = 1,
) -> DispatchPlan:
    """Apply capacity (``None``: dropless) and group the kept assignments by
    expert; ``capacity_per_expert`` is per routing group when there are
    ``num_groups`` (of ``num_tokens / num_groups`` consecutive tokens each)."""
    expert_A, choice_A = routing.expert_idx_A, routing.choice_A
    A = expert_A.numel()
    if drop_policy == "score":
        within_rank = -routing.score_A.float()
    else:
        within_rank = routing.token_idx_A.float()
    # Priority order (choice rank, then position | -score) by two stable
    # sorts; sort_by_expert then groups it by expert, keeping it inside each.
    priority = torch.argsort(within_rank, stable=True)
    priority = priority[torch.argsort(choice_A[priority], stable=True)]
    cap = None if routing.respects_capacity else capacity_per_expert
    G = num_groups
    expert_group_A = expert_A * G + routing.token_idx_A // (num_tokens // G)
    perm = sort_by_expert(expert_group_A, priority, num_experts * G, cap)
    keep = perm.order_A[: int(perm.counts_E.sum())]

    token_R = routing.token_idx_A[keep]
    kept_T = torch.bincount(token_R, minlength=num_tokens)
    return DispatchPlan(
        token_idx_R=token_R,
        expert_idx_R=expert_A[keep],
        weight_R=routing.weight_A[keep],
        counts_E=perm.counts_E.view(num_experts, G).sum(1),
        routed_E=perm.routed_E.view(num_experts, G).sum(1),
        dropped=A - keep.numel(),
        experts_per_token_T=kept_T,
        dropped_T=torch.bincount(routing.token_idx_A, minlength=num_tokens) - kept_T,
    )
