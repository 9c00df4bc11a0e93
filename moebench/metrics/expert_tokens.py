"""What each expert learned: the tokens over-represented among its assignments,
and how stable each token id's expert is across training.

The specialization the MoE surveys describe (an expert for punctuation, one
for a frequent article: ST-MoE, Zoph et al. 2022, sec. 7) shows
as tokens whose share of an expert's assignments far exceeds their share of
all tokens. Both measures read each token's top expert (its highest-weight
kept expert; -1 where it reached none, left out) and its token id, at one
evaluation; every evaluation draws the same tokens (moebench/evaluate.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# A token must reach an expert this many times to be listed: the lift of a
# token seen once is N / n_e wherever it lands, so one-hit rarities would
# top every list; at 5 hits the lift's relative error (Poisson) is under 1/2.
MIN_COUNT = 5


def over_represented(top_expert_N: Tensor, token_N: Tensor, num_experts: int, vocab_size: int,
                     top: int = 10, min_count: int = MIN_COUNT) -> list[list[tuple[int, int, float]]]:
    """Per expert, its ``top`` over-represented tokens, as (token id, count,
    lift), highest lift first.

    lift = P(token | expert) / P(token) = n_et N / (n_e n_t), over the tokens
    that reached an expert: 1 where the expert takes the token as often as
    any, E where only it does (at equal loads). A token is listed where its
    lift exceeds 1 and it reached the expert at least ``min_count`` times
    (:data:`MIN_COUNT`); ties go to the larger count, then the smaller id.
    """
    expert_N, token_N = _reached(top_expert_N, token_N)
    # Counts of the (expert, token) pairs that occur, not an E x V table: at
    # 1024 experts and WikiText-2's 33k words that would be 34M cells.
    pair_P, count_P = torch.unique(expert_N * vocab_size + token_N, return_counts=True)
    expert_P, token_P = pair_P // vocab_size, pair_P % vocab_size
    per_expert_E = torch.bincount(expert_N, minlength=num_experts)
    per_token_V = torch.bincount(token_N, minlength=vocab_size)
    lift_P = count_P * len(expert_N) / (per_expert_E[expert_P] * per_token_V[token_P]).double()
    kept_P = (count_P >= min_count) & (lift_P > 1)
    expert_K, token_K, count_K, lift_K = (x[kept_P].numpy() for x in (expert_P, token_P, count_P, lift_P))
    order_K = np.lexsort((token_K, -count_K, -lift_K, expert_K))  # the last key sorts first
    listed: list[list[tuple[int, int, float]]] = [[] for _ in range(num_experts)]
    for k in order_K:
        if len(listed[expert_K[k]]) < top:
            listed[expert_K[k]].append((int(token_K[k]), int(count_K[k]), float(lift_K[k])))
    return listed


def modal_expert(top_expert_N: Tensor, token_N: Tensor, vocab_size: int) -> Tensor:
    """``[V]``: each token id's most frequent top expert (the lowest on a
    tie), -1 for an id that never reached an expert."""
    expert_N, token_N = _reached(top_expert_N, token_N)
    modal_V = torch.full((vocab_size,), -1, dtype=torch.long)
    if expert_N.numel() == 0:
        return modal_V
    E = int(expert_N.max()) + 1  # pairs that occur, as above: PEER has a million experts
    pair_P, count_P = torch.unique(token_N * E + expert_N, return_counts=True)
    token_P, expert_P = (pair_P // E).numpy(), (pair_P % E).numpy()
    order_P = np.lexsort((expert_P, -count_P.numpy(), token_P))  # by token, most frequent first
    token_P, expert_P = token_P[order_P], expert_P[order_P]
    first_P = np.r_[True, token_P[1:] != token_P[:-1]]
    modal_V[token_P[first_P]] = torch.from_numpy(expert_P[first_P])
    return modal_V


def _reached(top_expert_N: Tensor, token_N: Tensor) -> tuple[Tensor, Tensor]:
    """The top experts and token ids of the tokens that reached an expert."""
    reached_N = top_expert_N >= 0
    return top_expert_N[reached_N].long(), token_N[reached_N].long()


def agreement(previous_V: Tensor, current_V: Tensor, counts_V: Tensor) -> float:
    """The share of tokens, each id weighted by its count ``counts_V``, whose
    id has the same modal expert at two evaluations; over the ids that have
    one at both (NaN where none has). 1: no token changed expert."""
    both_V = (previous_V >= 0) & (current_V >= 0)
    weight_V = counts_V.double() * both_V
    if weight_V.sum() == 0:
        return float("nan")
    return float((weight_V * (previous_V == current_V)).sum() / weight_V.sum())


def mean_agreement(previous_LV: Tensor, current_LV: Tensor, counts_V: Tensor) -> float:
    """:func:`agreement` of each layer's map, averaged over layers."""
    return sum(agreement(p_V, c_V, counts_V) for p_V, c_V in zip(previous_LV, current_LV)) / len(current_LV)
