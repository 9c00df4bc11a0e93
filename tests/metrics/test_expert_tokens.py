import math

import pytest
import torch

from moebench.metrics.expert_tokens import agreement, mean_agreement, modal_expert, over_represented


def assignments(*runs: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(top expert, token id) tensors from (expert, token, times) runs."""
    expert_N = torch.tensor([e for e, _, n in runs for _ in range(n)])
    token_N = torch.tensor([t for _, t, n in runs for _ in range(n)])
    return expert_N, token_N


def test_lift_is_share_at_the_expert_over_overall_share():
    # Tokens 1 and 3 each go to one expert of two equal loads (lift 2); token
    # 2 goes to expert 0 twice as often as to expert 1: lifts 4/3 and 2/3,
    # under-represented at expert 1, so not listed there. The dropped token 3
    # (expert -1) counts nowhere.
    expert_N, token_N = assignments((0, 1, 8), (0, 2, 10), (1, 2, 5), (1, 3, 13), (-1, 3, 4))
    listed = over_represented(expert_N, token_N, num_experts=2, vocab_size=4)
    assert listed == [[(1, 8, 2.0), (2, 10, pytest.approx(4 / 3))], [(3, 13, 2.0)]]


def test_tokens_below_the_minimum_count_are_not_listed():
    # N = 21 tokens, 7 at expert 1; token 9, seen once, has the largest lift
    # there, 1 * 21 / (7 * 1), above token 0's 6 * 21 / (7 * 8).
    expert_N, token_N = assignments((0, 5, 12), (0, 0, 2), (1, 0, 6), (1, 9, 1))
    assert over_represented(expert_N, token_N, 2, 10)[1] == [(0, 6, 2.25)]
    assert over_represented(expert_N, token_N, 2, 10, min_count=1)[1] == [(9, 1, 3.0), (0, 6, 2.25)]


def test_equal_lifts_rank_by_count_then_id_and_keep_the_top():
    expert_N, token_N = assignments((0, 5, 6), (0, 2, 6), (0, 7, 8), (1, 1, 20))
    assert over_represented(expert_N, token_N, 2, 8, top=2)[0] == [(7, 8, 2.0), (2, 6, 2.0)]


def test_an_expert_that_took_nothing_lists_nothing():
    expert_N, token_N = assignments((1, 0, 5), (2, 1, 5))
    assert over_represented(expert_N, token_N, 3, 2) == [[], [(0, 5, 2.0)], [(1, 5, 2.0)]]


def test_modal_expert_per_token_id():
    expert_N = torch.tensor([1, 1, 0, 2, 3, -1])
    token_N = torch.tensor([0, 0, 0, 1, 1, 2])
    # id 1: a tie between experts 2 and 3 goes to 2; id 2 reached none; id 3 unseen.
    assert modal_expert(expert_N, token_N, vocab_size=4).tolist() == [1, 2, -1, -1]
    assert modal_expert(torch.tensor([-1]), torch.tensor([0]), 2).tolist() == [-1, -1]


def test_agreement_weights_ids_by_count_over_ids_mapped_at_both():
    previous_V = torch.tensor([1, 2, 0, -1])
    current_V = torch.tensor([1, 3, 0, 2])
    counts_V = torch.tensor([5, 3, 2, 4])
    assert agreement(previous_V, current_V, counts_V) == pytest.approx(7 / 10)
    assert agreement(current_V, current_V, counts_V) == 1.0
    assert math.isnan(agreement(torch.tensor([-1]), torch.tensor([0]), torch.tensor([3])))


def test_mean_agreement_averages_layers():
    previous_LV = torch.tensor([[0, 1], [0, 1]])
    current_LV = torch.tensor([[0, 1], [1, 1]])
    counts_V = torch.tensor([1, 3])
    assert mean_agreement(previous_LV, current_LV, counts_V) == pytest.approx((1 + 3 / 4) / 2)


def test_many_experts_and_words_need_no_table_of_every_pair():
    # PEER's expert ids reach 10^6; 1024 experts by WikiText-2's 33k words would be 34M cells.
    expert_N = torch.tensor([999_999, 999_999, 3, 7])
    token_N = torch.tensor([5, 5, 5, 0])
    assert modal_expert(expert_N, token_N, vocab_size=6).tolist() == [7, -1, -1, -1, -1, 999_999]
    expert_N, token_N = torch.tensor([1023, 1023, 3, 7]), torch.tensor([39_999, 39_999, 39_999, 0])
    listed = over_represented(expert_N, token_N, 1024, 40_000, min_count=1)
    assert listed[1023] == [(39_999, 2, pytest.approx(4 / 3))] and listed[7] == [(0, 1, 4.0)]
