"""Communication metrics against hand-counted exchanges (E = 8, d_model 16, float32: 64-byte rows)."""

import pytest
import torch

from moebench.metrics.communication import contiguous_rank, exchange_metrics
from moebench.metrics.routing import RoutingAccumulator
from moebench.moe.block import MoEBlock
from moebench.moe.dispatch import plan_dispatch
from moebench.moe.experts import Experts
from moebench.routers.base import DataStats, RouterContext, sparse_from_topk
from moebench.routers.hash import HashConfig, HashRouter
from moebench.routers.soft import SoftConfig, SoftRouter
from moebench.routers.top1 import Top1Config, Top1Router
from moebench.routers.top2 import Top2Config, Top2Router

E, D = 8, 16
ROW_BYTES = D * 4


def metrics(token_R, expert_R, num_tokens, num_ranks, row_bytes=ROW_BYTES):
    rows = torch.tensor([token_R, expert_R], dtype=torch.long).view(2, -1)
    return exchange_metrics(rows[0], rows[1], num_tokens, E, num_ranks, row_bytes)


def test_all_local_top1_sends_nothing():
    # P = 2: tokens 0-1 and experts 0-3 on process 0, tokens 2-3 and experts 4-7 on 1.
    m = metrics([0, 1, 2, 3], [0, 3, 4, 7], num_tokens=4, num_ranks=2)
    assert m == {"comm_bytes_per_token": 0.0, "comm_remote_share": 0.0,
                 "comm_rank_load_max_over_mean": 1.0}


def test_all_remote_top1_sends_every_row_out_and_back():
    m = metrics([0, 1, 2, 3], [4, 5, 0, 1], num_tokens=4, num_ranks=2)
    assert m["comm_bytes_per_token"] == 2 * 4 * ROW_BYTES / 4  # 4 rows, out and back, over 4 tokens
    assert m["comm_remote_share"] == 1.0
    assert m["comm_rank_load_max_over_mean"] == 1.0


def test_top2_counts_each_copy():
    # Choice-major, as routers list them: first choices, then second choices.
    token_R = [0, 1, 2, 3, 0, 1, 2, 3]
    expert_R = [0, 1, 4, 5, 4, 7, 6, 2]  # remote: tokens 0 and 1 to 4 and 7, token 3 to 2
    m = metrics(token_R, expert_R, num_tokens=4, num_ranks=2)
    assert m["comm_bytes_per_token"] == 2 * 3 * ROW_BYTES / 4
    assert m["comm_remote_share"] == 3 / 8
    assert m["comm_rank_load_max_over_mean"] == 5 / 4  # process 0 gets 3 rows, process 1 gets 5


def test_four_processes():
    # Token t on process t // 2, expert e on process e // 2.
    m = metrics(list(range(8)), [0, 2, 4, 6, 1, 3, 5, 7], num_tokens=8, num_ranks=4)
    assert m["comm_bytes_per_token"] == 2 * 6 * ROW_BYTES / 8  # tokens 0 and 7 stay
    assert m["comm_remote_share"] == 6 / 8
    assert m["comm_rank_load_max_over_mean"] == 1.0


def test_eight_processes_all_to_one_expert():
    m = metrics(list(range(8)), [0] * 8, num_tokens=8, num_ranks=8)
    assert m["comm_bytes_per_token"] == 2 * 7 * ROW_BYTES / 8  # only token 0 is at home
    assert m["comm_remote_share"] == 7 / 8
    assert m["comm_rank_load_max_over_mean"] == 8.0  # one process does all the work


def test_bytes_follow_the_dtype():
    bf16_row = D * torch.empty((), dtype=torch.bfloat16).element_size()
    full = metrics([0, 1], [7, 7], num_tokens=2, num_ranks=2)
    half = metrics([0, 1], [7, 7], num_tokens=2, num_ranks=2, row_bytes=bf16_row)
    assert half["comm_bytes_per_token"] == full["comm_bytes_per_token"] / 2 == 2 * ROW_BYTES / 2 / 2


def test_dropped_assignments_do_not_travel():
    # top-2 under capacity 1: every token picks expert 4 then expert 0; only
    # token 0 keeps either. Its first row leaves process 0, its second stays.
    probs = torch.full((4, E), 0.01)
    probs[:, 4], probs[:, 0] = 0.6, 0.3
    experts_TK = torch.tensor([[4, 0]] * 4)
    routing = sparse_from_topk(probs, probs.gather(1, experts_TK), experts_TK)
    plan = plan_dispatch(routing, num_tokens=4, num_experts=E, capacity_per_expert=1)
    assert plan.dropped == 6
    m = exchange_metrics(plan.token_idx_R, plan.expert_idx_R, 4, E, 2, ROW_BYTES)
    assert m["comm_bytes_per_token"] == 2 * 1 * ROW_BYTES / 4
    assert m["comm_remote_share"] == 1 / 2
    assert m["comm_rank_load_max_over_mean"] == 1.0


def test_no_rows_is_no_traffic_and_no_imbalance():
    m = metrics([], [], num_tokens=4, num_ranks=8)
    assert m == {"comm_bytes_per_token": 0.0, "comm_remote_share": 0.0,
                 "comm_rank_load_max_over_mean": 1.0}


@pytest.mark.parametrize("num_items, num_ranks, want", [
    (8, 2, [0, 0, 0, 0, 1, 1, 1, 1]),
    (10, 4, [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]),  # uneven: as even as can be
    (4, 8, [0, 2, 4, 6]),  # more processes than experts: some hold none
])
def test_contiguous_placement(num_items, num_ranks, want):
    assert contiguous_rank(torch.arange(num_items), num_items, num_ranks).tolist() == want


def block_for(router_cls, cfg, **options) -> MoEBlock:
    torch.manual_seed(0)
    return MoEBlock(router_cls(cfg, D, E, DataStats(vocab_size=32)), Experts(E, D, 32, "gelu"),
                    k=cfg.k, capacity_factor=1.0, eval_capacity_factor=1.0,
                    dropless=getattr(cfg, "dropless", False), drop_policy="position", **options)


def test_block_rows_are_its_kept_assignments_two_per_top2_token():
    block = block_for(Top2Router, Top2Config(name="top2", second_policy="all"))
    _, stats = block(torch.randn(64, D), RouterContext())
    assert stats.dropped > 0  # capacity 1.0 drops some second choices
    assert torch.bincount(stats.row_token_R, minlength=64).tolist() == stats.experts_per_token_T.tolist()
    assert torch.bincount(stats.row_expert_R, minlength=E).tolist() == stats.kept_E.tolist()
    assert stats.row_bytes == D * 4


def test_position_groups_give_rows_in_token_order():
    block = block_for(HashRouter, HashConfig(name="hash"), routing_groups="position")
    token_ids = torch.randint(32, (4, 8))
    ctx = RouterContext(token_ids_T=token_ids.reshape(-1), batch_shape=(4, 8))
    _, stats = block(torch.randn(4, 8, D), ctx)
    assert stats.row_token_R.sort().values.tolist() == list(range(32))  # dropless: each token once
    want = block.router.expert_V[token_ids.reshape(-1)[stats.row_token_R]]
    assert stats.row_expert_R.tolist() == want.tolist()


def test_soft_moe_slots_travel_from_their_group():
    block = block_for(SoftRouter, SoftConfig(name="soft", slots_per_expert=2))
    _, stats = block(torch.randn(3, 4, D), RouterContext(batch_shape=(3, 4)))  # 3 sequences: groups
    assert torch.bincount(stats.row_expert_R).tolist() == [3 * 2] * E
    assert torch.bincount(stats.row_token_R).tolist() == [E * 2, 0, 0, 0] * 2 + [E * 2]  # first tokens
    m = exchange_metrics(stats.row_token_R, stats.row_expert_R, 12, E, 3, stats.row_bytes)
    # Group g on process g; experts 0-2, 3-5, 6-7 on processes 0, 1, 2 (floor(e * 3 / 8)).
    local = 2 * (3 + 3 + 2)  # each group's slots for its own process's experts
    assert m["comm_remote_share"] == (3 * E * 2 - local) / (3 * E * 2)


def test_accumulator_averages_the_figures_over_batches():
    acc = RoutingAccumulator(comm_ranks=2)
    block = block_for(Top1Router, Top1Config(name="top1"))
    figures = []
    for _ in range(3):
        _, stats = block(torch.randn(16, D), RouterContext())
        acc.add([stats])
        figures.append(exchange_metrics(stats.row_token_R, stats.row_expert_R, 16, E, 2, stats.row_bytes))
    summary = acc.summary()
    for key in figures[0]:
        assert summary[key] == pytest.approx(sum(f[key] for f in figures) / 3)
        assert summary["per_layer"][0][key] == summary[key]
