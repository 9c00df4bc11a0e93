"""Dispatch: capacity, drop priority and drop accounting, once for all routers.

Capacity follows GShard / Switch Transformer: ``C = ceil(cf * k * T / E)``
(Fedus et al. 2021, eq. 3 with k = 1; Lepikhin et al. 2020 for k = 2).
Overflow is dropped by priority: first choices before second choices, and
within a choice rank by token position ("position", the Switch default) or by
router score ("score", batch-prioritized routing, Riquelme et al. 2021,
section 4). The kept assignments come out stably sorted by expert, ready for
the grouped expert forward.
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


def capacity(num_tokens: int, num_experts: int, k: int, capacity_factor: float) -> int:
    """Expert capacity C = ceil(cf * k * T / E) (Switch eq. 3, GShard)."""
    return math.ceil(capacity_factor * k * num_tokens / num_experts)


def plan_dispatch(
    routing: SparseRouting,
    num_tokens: int,
    num_experts: int,
    capacity_per_expert: int | None,
    drop_policy: str = "position",
) -> DispatchPlan:
    """Apply capacity (``None``: dropless) and group the kept assignments by expert."""
    expert_A, choice_A = routing.expert_idx_A, routing.choice_A
    A = expert_A.numel()
    if drop_policy == "score":
        within_rank = -routing.score_A.float()
    else:
        within_rank = routing.token_idx_A.float()
    # Two stable sorts give the order (expert, choice rank, position | -score):
    # first by priority, then by expert keeping that priority inside each expert.
    priority = torch.argsort(within_rank, stable=True)
    priority = priority[torch.argsort(choice_A[priority], stable=True)]
    order = priority[torch.argsort(expert_A[priority], stable=True)]

    routed_E = torch.bincount(expert_A, minlength=num_experts)
    if capacity_per_expert is None or routing.respects_capacity:
        keep = order
    else:
        offsets_E = torch.cumsum(routed_E, 0) - routed_E
        sorted_expert = expert_A[order]
        rank_in_expert = torch.arange(A, device=expert_A.device) - offsets_E[sorted_expert]
        keep = order[rank_in_expert < capacity_per_expert]

    token_R = routing.token_idx_A[keep]
    kept_T = torch.bincount(token_R, minlength=num_tokens)
    return DispatchPlan(
        token_idx_R=token_R,
        expert_idx_R=expert_A[keep],
        weight_R=routing.weight_A[keep],
        counts_E=torch.bincount(expert_A[keep], minlength=num_experts),
        routed_E=routed_E,
        dropped=A - keep.numel(),
        experts_per_token_T=kept_T,
        dropped_T=torch.bincount(routing.token_idx_A, minlength=num_tokens) - kept_T,
    )
