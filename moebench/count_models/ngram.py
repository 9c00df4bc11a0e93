"""N-gram count models over token-id arrays: what counting alone predicts.

Three estimators, each fitted on a training stream of ids in ``0..V-1`` and
giving the probability of a next token from at most ``order - 1`` tokens
before it; ids are packed into one int64 per n-gram (``u * V + v``), so
counting is one ``np.unique`` and a lookup one ``np.searchsorted``, with no
Python loop over tokens.

* :class:`Unigram` -- add-one (Laplace) smoothing: ``(c(w) + 1) / (N + V)``.
* :class:`Bigram` -- add-k (Lidstone) smoothing with k = 0.1:
  ``(c(vw) + k) / (c(v.) + k V)`` (Chen & Goodman 1998, section 2.1,
  "additive smoothing").
* :class:`KneserNeyTrigram` -- interpolated *modified* Kneser-Ney (Chen &
  Goodman 1998, section 3; Kneser & Ney 1995), recursing to the uniform
  distribution, with three discounts per order from that order's
  count-of-counts.

Shape suffixes: N tokens, V vocabulary, K distinct n-grams, X distinct
contexts, C context ids, B windows of W tokens.

Chen & Goodman 1998: "An Empirical Study of Smoothing Techniques for
Language Modeling", Harvard TR-10-98 (also Computer Speech & Language 13,
1999). Kneser & Ney 1995: "Improved backing-off for M-gram language
modeling", ICASSP. Heafield, Pouzyrevsky, Clark & Koehn 2013: "Scalable
Modified Kneser-Ney Language Model Estimation", ACL (KenLM's lmplz).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

# KenLM's lmplz --discount_fallback defaults (D1, D2, D3+), used for an order
# whose closed-form estimate is undefined or out of range: a vocabulary of 50
# characters can have no type seen in exactly 3 contexts (PTB-char does).
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
ADD_K = 0.1  # the bigram's additive constant


class CountModel(ABC):
    """A next-token distribution from counts of a training stream."""

    #: The reference's name as reports show it, smoothing included.
    name: str
    #: Tokens of an n-gram: ``order - 1`` of context and the next token.
    order: int

    def __init__(self, train_N: np.ndarray, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.fit(np.asarray(train_N, dtype=np.int64))

    @abstractmethod
    def fit(self, train_N: np.ndarray) -> None:
        """Count the training stream (int64 ids)."""

    @abstractmethod
    def prob(self, context_NC: np.ndarray, next_N: np.ndarray) -> np.ndarray:
        """Probability of each ``next_N`` after its context row ``context_NC``
        (``C = order - 1`` ids, oldest first). -1 stands for a position
        before the start of the text: the context is then shorter, or none."""

    def window_probs(self, tokens_BW: np.ndarray) -> np.ndarray:
        """``[B, W]``: the probability of every token of each row given the up
        to ``order - 1`` tokens before it in its row (none for the first)."""
        tokens_BW = np.asarray(tokens_BW, dtype=np.int64)
        (B, W), C = tokens_BW.shape, self.order - 1
        padded_BP = np.concatenate([np.full((B, C), -1, dtype=np.int64), tokens_BW], axis=1)
        # [b, w]: row b's C ids before its token w, oldest first.
        context_BWC = np.lib.stride_tricks.sliding_window_view(padded_BP, C + 1, axis=1)[:, :, :C]
        return self.prob(context_BWC.reshape(B * W, C), tokens_BW.reshape(-1)).reshape(B, W)

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """``[V]``: the probability of every id after ``context`` (its last
        ``order - 1`` ids; fewer at the start of a text)."""
        C = self.order - 1
        kept = list(context)[max(0, len(context) - C):]
        row_C = np.array([-1] * (C - len(kept)) + kept, dtype=np.int64)
        return self.prob(np.tile(row_C, (self.vocab_size, 1)), np.arange(self.vocab_size))


def _lookup(keys_K: np.ndarray, values_K: np.ndarray, query_N: np.ndarray) -> np.ndarray:
    """``values_K`` at each query found in the sorted ``keys_K``, else 0."""
    if len(keys_K) == 0:
        return np.zeros(len(query_N), dtype=values_K.dtype)
    at_N = np.minimum(np.searchsorted(keys_K, query_N), len(keys_K) - 1)
    return np.where(keys_K[at_N] == query_N, values_K[at_N], 0)


class Unigram(CountModel):
    """Add-one (Laplace) smoothing: ``p(w) = (c(w) + 1) / (N + V)``."""

    name = "unigram (add-one)"
    order = 1

    def fit(self, train_N: np.ndarray) -> None:
        counts_V = np.bincount(train_N, minlength=self.vocab_size)
        self.probs_V = (counts_V + 1) / (len(train_N) + self.vocab_size)

    def prob(self, context_NC: np.ndarray, next_N: np.ndarray) -> np.ndarray:
        return self.probs_V[next_N]


class Bigram(CountModel):
    """Add-k (Lidstone) smoothing, k = :data:`ADD_K`:
    ``p(w | v) = (c(vw) + k) / (c(v.) + k V)``, c(v.) the bigrams starting
    with v (Chen & Goodman 1998, section 2.1)."""

    name = f"bigram (add-{ADD_K:g})"
    order = 2

    def fit(self, train_N: np.ndarray) -> None:
        V = self.vocab_size
        self.keys_K, self.counts_K = np.unique(train_N[:-1] * V + train_N[1:], return_counts=True)
        self.context_counts_V = np.bincount(train_N[:-1], minlength=V)

    def prob(self, context_NC: np.ndarray, next_N: np.ndarray) -> np.ndarray:
        # No context (-1) counts as a context never seen: the formula's 1 / V.
        v_N = context_NC[:, 0]
        counts_N = _lookup(self.keys_K, self.counts_K, v_N * self.vocab_size + next_N)
        context_counts_N = np.where(v_N >= 0, self.context_counts_V[np.maximum(v_N, 0)], 0)
        return (counts_N + ADD_K) / (context_counts_N + ADD_K * self.vocab_size)


def modified_kn_discounts(counts_K: np.ndarray) -> np.ndarray:
    """``[0, D1, D2, D3+]``: the discount of an n-gram seen 0, 1, 2 or >= 3
    times, estimated from the count-of-counts n_r of ``counts_K`` (Chen &
    Goodman 1998, section 3): Y = n1 / (n1 + 2 n2), D1 = 1 - 2Y n2/n1,
    D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3. Where some n_r (r <= 4) is 0 or a
    D_r falls outside [0, r] (KenLM's validity test), :data:`FALLBACK_DISCOUNTS`."""
    n1, n2, n3, n4 = (np.count_nonzero(counts_K == r) for r in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) == 0:
        return np.array([0.0, *FALLBACK_DISCOUNTS])
    y = n1 / (n1 + 2 * n2)
    estimated = [1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3]
    if not all(0 <= d <= r for r, d in enumerate(estimated, start=1)):
        return np.array([0.0, *FALLBACK_DISCOUNTS])
    return np.array([0.0, *estimated])


class KneserNeyTrigram(CountModel):
    """Interpolated modified Kneser-Ney, order 3 (Chen & Goodman 1998, section 3):

        p3(w | uv) = (max(c(uvw) - D3(c(uvw)), 0) + g3(uv) p2(w | v)) / c(uv.)
        p2(w | v)  = (max(n(.vw) - D2(n(.vw)), 0) + g2(v) p1(w)) / n(.v.)
        p1(w)      = (max(n(.w) - D1(n(.w)), 0) + g1 / V) / n(..)

    with c the trigram counts, n(.vw) the number of distinct u before vw in
    training (the continuation counts that make KN's lower orders), n(.w)
    the number of distinct v before w, and each g the total discount taken
    from its context, e.g. g3(uv) = sum_w D3(c(uvw)), so that every
    distribution sums to 1. A context never seen (c(uv.) = 0) gives the lower
    order whole. Each order has its own three discounts
    (:func:`modified_kn_discounts` of the counts it discounts, as KenLM's
    lmplz, Heafield et al. 2013); the unigram order is interpolated with the
    uniform distribution, so every id has a probability.
    """

    name = "trigram (interpolated modified Kneser-Ney)"
    order = 3

    def fit(self, train_N: np.ndarray) -> None:
        V = self.vocab_size
        if V ** 3 >= 2 ** 63:
            raise ValueError(f"vocab_size={V} is not valid; allowed: below 2097152 (a trigram's ids "
                             "are packed into one int64)")
        # Order 3: trigram counts, grouped by their context uv.
        self.tri_keys_K, self.tri_counts_K = np.unique((train_N[:-2] * V + train_N[1:-1]) * V + train_N[2:],
                                                       return_counts=True)
        self.d3_4 = modified_kn_discounts(self.tri_counts_K)
        self.uv_keys_X, uv_of_K = np.unique(self.tri_keys_K // V, return_inverse=True)
        self.uv_totals_X = np.bincount(uv_of_K, weights=self.tri_counts_K)
        self.uv_gammas_X = np.bincount(uv_of_K, weights=self.d3_4[np.minimum(self.tri_counts_K, 3)])
        # Order 2: continuation counts n(.vw), the distinct u before each vw.
        self.bi_keys_K, self.bi_counts_K = np.unique(self.tri_keys_K % (V * V), return_counts=True)
        self.d2_4 = modified_kn_discounts(self.bi_counts_K)
        v_K = self.bi_keys_K // V
        self.v_totals_V = np.bincount(v_K, weights=self.bi_counts_K, minlength=V)
        self.v_gammas_V = np.bincount(v_K, weights=self.d2_4[np.minimum(self.bi_counts_K, 3)], minlength=V)
        # Order 1: n(.w), the distinct v before each w, interpolated with 1 / V.
        uni_counts_V = np.bincount(self.bi_keys_K % V, minlength=V)
        discounts_V = modified_kn_discounts(uni_counts_V)[np.minimum(uni_counts_V, 3)]
        self.uni_probs_V = (uni_counts_V - discounts_V + discounts_V.sum() / V) / uni_counts_V.sum()

    def prob(self, context_NC: np.ndarray, next_N: np.ndarray) -> np.ndarray:
        u_N, v_N, V = context_NC[:, 0], context_NC[:, 1], self.vocab_size
        p2_N = self.bigram_prob(v_N, next_N)
        uv_N = np.where((u_N >= 0) & (v_N >= 0), u_N * V + v_N, -1)
        at_N = np.minimum(np.searchsorted(self.uv_keys_X, uv_N), len(self.uv_keys_X) - 1)
        seen_N = self.uv_keys_X[at_N] == uv_N
        counts_N = _lookup(self.tri_keys_K, self.tri_counts_K, uv_N * V + next_N)
        kept_N = counts_N - self.d3_4[np.minimum(counts_N, 3)]
        totals_N = np.where(seen_N, self.uv_totals_X[at_N], 1.0)
        return np.where(seen_N, (kept_N + self.uv_gammas_X[at_N] * p2_N) / totals_N, p2_N)

    def bigram_prob(self, v_N: np.ndarray, w_N: np.ndarray) -> np.ndarray:
        """p2(w | v); p1(w) where v is -1 (no context) or never a context."""
        has_v_N = v_N >= 0
        v_N = np.where(has_v_N, v_N, 0)
        p1_N = self.uni_probs_V[w_N]
        counts_N = _lookup(self.bi_keys_K, self.bi_counts_K, v_N * self.vocab_size + w_N)
        kept_N = counts_N - self.d2_4[np.minimum(counts_N, 3)]
        totals_N = np.where(has_v_N, self.v_totals_V[v_N], 0.0)
        seen_N = totals_N > 0
        p2_N = (kept_N + self.v_gammas_V[v_N] * p1_N) / np.where(seen_N, totals_N, 1.0)
        return np.where(seen_N, p2_N, p1_N)


COUNT_MODELS: tuple[type[CountModel], ...] = (Unigram, Bigram, KneserNeyTrigram)
