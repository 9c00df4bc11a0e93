"""sort_by_expert: the kept rows plan_dispatch uses, every size fixed (no compaction)."""

import pytest
import torch

from moebench.moe.dispatch import plan_dispatch, sort_by_expert
from moebench.routers.base import sparse_from_topk


def topk_routing(num_tokens: int, num_experts: int, k: int, gen: torch.Generator):
    # Skewed logits, so some experts overflow and others stay empty.
    bias_E = torch.linspace(0, 4, num_experts)
    probs_TE = (torch.randn(num_tokens, num_experts, generator=gen) + bias_E).softmax(-1)
    weights_TK, experts_TK = probs_TE.topk(k, dim=-1)
    return sparse_from_topk(probs_TE, weights_TK, experts_TK)


@pytest.mark.parametrize("capacity", [None, 0, 5, 30])
@pytest.mark.parametrize("num_experts", [4, 16])
def test_same_kept_rows_as_plan_dispatch(capacity, num_experts):
    gen = torch.Generator().manual_seed(num_experts * 100 + (capacity or 1))
    routing = topk_routing(64, num_experts, 2, gen)
    A = routing.expert_idx_A.numel()
    plan = plan_dispatch(routing, 64, num_experts, capacity)
    # Assignments are listed choice-major, token order within a choice: that
    # list already is plan_dispatch's priority order under the position policy.
    perm = sort_by_expert(routing.expert_idx_A, torch.arange(A), num_experts, capacity)

    kept = int(perm.counts_E.sum())
    assert perm.order_A.shape == (A,)
    assert torch.equal(perm.order_A.sort().values, torch.arange(A))  # dropped are kept in place
    assert torch.equal(perm.counts_E, plan.counts_E)
    assert torch.equal(perm.routed_E, plan.routed_E)
    assert A - kept == plan.dropped
    kept_A = perm.order_A[:kept]
    assert torch.equal(routing.token_idx_A[kept_A], plan.token_idx_R)
    assert torch.equal(routing.expert_idx_A[kept_A], plan.expert_idx_R)
    assert torch.equal(routing.weight_A[kept_A], plan.weight_R)
