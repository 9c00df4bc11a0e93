"""Capacity and drop accounting against hand-worked examples."""

import torch

from moebench.moe.dispatch import capacity, plan_dispatch
from moebench.routers.base import SparseRouting


def routing(experts, choices=None, scores=None, tokens=None):
    experts = torch.tensor(experts)
    A = experts.numel()
    return SparseRouting(
        token_idx_A=torch.tensor(tokens) if tokens is not None else torch.arange(A),
        expert_idx_A=experts,
        weight_A=torch.ones(A),
        choice_A=torch.tensor(choices) if choices is not None else torch.zeros(A, dtype=torch.long),
        score_A=torch.tensor(scores) if scores is not None else torch.ones(A),
    )


def test_capacity_formula():
    # ceil(cf * k * T / E): ceil(1.25 * 2 * 10 / 4) = ceil(6.25) = 7
    assert capacity(10, 4, 2, 1.25) == 7
    assert capacity(6, 2, 1, 1.0) == 3


def test_position_policy_keeps_earliest_tokens():
    # Expert 0 is asked for by tokens 0, 1, 2, 3, 5 but holds C = 3.
    plan = plan_dispatch(routing([0, 0, 0, 0, 1, 0]), 6, 2, capacity_per_expert=3)
    assert plan.token_idx_R.tolist() == [0, 1, 2, 4]
    assert plan.expert_idx_R.tolist() == [0, 0, 0, 1]
    assert plan.counts_E.tolist() == [3, 1]
    assert plan.routed_E.tolist() == [5, 1]
    assert plan.dropped == 2
    assert plan.experts_per_token_T.tolist() == [1, 1, 1, 0, 1, 0]


def test_score_policy_keeps_most_confident_tokens():
    # Batch-prioritized routing: expert 0 keeps the 3 highest scores (tokens 1, 3, 5).
    scores = [0.1, 0.9, 0.5, 0.8, 0.7, 0.6]
    plan = plan_dispatch(routing([0, 0, 0, 0, 1, 0], scores=scores), 6, 2, 3, drop_policy="score")
    assert sorted(plan.token_idx_R[plan.expert_idx_R == 0].tolist()) == [1, 3, 5]
    assert plan.experts_per_token_T.tolist() == [0, 1, 0, 1, 1, 1]


def test_first_choices_beat_second_choices_whatever_the_position():
    # Token 0: first e0, second e1; token 1: first e1, second e0. C = 1.
    r = routing([0, 1, 1, 0], choices=[0, 0, 1, 1], tokens=[0, 1, 0, 1])
    plan = plan_dispatch(r, 2, 2, capacity_per_expert=1)
    kept = set(zip(plan.token_idx_R.tolist(), plan.expert_idx_R.tolist()))
    assert kept == {(0, 0), (1, 1)}
    assert plan.dropped == 2


def test_dropless_and_capacity_respecting_routings_drop_nothing():
    r = routing([0, 0, 0, 0, 1, 0])
    assert plan_dispatch(r, 6, 2, capacity_per_expert=None).dropped == 0
    r.respects_capacity = True
    assert plan_dispatch(r, 6, 2, capacity_per_expert=1).dropped == 0


def test_rows_are_grouped_by_expert_in_a_stable_order():
    g = torch.Generator().manual_seed(0)
    experts = torch.randint(0, 5, (200,), generator=g)
    plan = plan_dispatch(routing(experts.tolist()), 200, 5, capacity_per_expert=None)
    assert torch.all(plan.expert_idx_R[1:] >= plan.expert_idx_R[:-1])
    for e in range(5):  # within an expert, position order (stable)
        tokens = plan.token_idx_R[plan.expert_idx_R == e]
        assert torch.all(tokens[1:] > tokens[:-1])
    assert plan.counts_E.tolist() == torch.bincount(experts, minlength=5).tolist()
