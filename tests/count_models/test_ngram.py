"""The count models' defining properties: distributions that sum to 1, and the
numbers their smoothing formulas give, worked out by hand on tiny corpora."""

from collections import Counter

import numpy as np
import pytest

from moebench.count_models.ngram import (
    COUNT_MODELS, FALLBACK_DISCOUNTS, Bigram, KneserNeyTrigram, Unigram, modified_kn_discounts,
)

# "a b a c a b" with a vocabulary of 4: d (3) never occurs.
A, B, C, D = range(4)
TINY = np.array([A, B, A, C, A, B])


@pytest.mark.parametrize("model_cls", COUNT_MODELS)
@pytest.mark.parametrize("context", [(), (A,), (D,), (A, B), (C, A), (D, D), (B, D)])
def test_every_distribution_sums_to_one(model_cls, context):
    # Seen and unseen contexts, and shorter ones (the start of a window).
    rng = np.random.default_rng(0)
    corpus = rng.integers(0, 7, 500)
    corpus[corpus == 6] = 0  # id 6 never occurs
    probs_V = model_cls(corpus, 7).distribution(context)
    assert probs_V.shape == (7,) and (probs_V > 0).all()
    assert probs_V.sum() == pytest.approx(1.0, abs=1e-12)


def test_unigram_is_add_one():
    probs_V = Unigram(TINY, 4).distribution(())
    # counts 3, 2, 1, 0 of 6 tokens: (c + 1) / (6 + 4)
    assert probs_V.tolist() == pytest.approx([0.4, 0.3, 0.2, 0.1])


def test_bigram_is_add_a_tenth():
    model = Bigram(TINY, 4)
    # a is followed by b twice and by c once: c(a.) = 3
    assert model.distribution((A,)).tolist() == pytest.approx([0.1 / 3.4, 2.1 / 3.4, 1.1 / 3.4, 0.1 / 3.4])
    # d is never a context, and no context at all: (0 + k) / (0 + k V) = 1/4
    assert model.distribution((D,)).tolist() == pytest.approx([0.25] * 4)
    assert model.distribution(()).tolist() == pytest.approx([0.25] * 4)


def test_modified_kn_discounts_follow_chen_and_goodman():
    counts = np.array([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [9])
    # Y = 10 / (10 + 2*5) = 0.5; D1 = 1 - 2Y*5/10, D2 = 2 - 3Y*3/5, D3+ = 3 - 4Y*2/3
    assert modified_kn_discounts(counts).tolist() == pytest.approx([0, 0.5, 1.1, 3 - 4 / 3])
    # No n-gram seen 3 times: the closed form is undefined, KenLM's fallback.
    assert modified_kn_discounts(np.array([1, 1, 2, 4])).tolist() == [0, *FALLBACK_DISCOUNTS]


def test_kneser_ney_by_hand():
    # Every trigram (aba, bac, aca, cab) and every continuation bigram (ba, ac,
    # ca, ab) is seen once: fallback discounts 0.5, 1, 1.5 at every order.
    model = KneserNeyTrigram(TINY, 4)
    # n(.w): a follows b and c (2), b and c follow a (1 each), d nothing; total 4,
    # discounts 1 + 0.5 + 0.5 = 2 spread uniformly: p1 = (n - D + 2/4) / 4
    assert model.distribution(()).tolist() == pytest.approx([0.375, 0.25, 0.25, 0.125])
    # context a: n(.ab) = n(.ac) = 1, total 2, g2(a) = 0.5 + 0.5
    p2_a = [(0 + 1 * 0.375) / 2, (0.5 + 0.25) / 2, (0.5 + 0.25) / 2, (0 + 0.125) / 2]
    assert model.distribution((A,)).tolist() == pytest.approx(p2_a)
    # context ca: c(cab) = 1, total 1, g3(ca) = 0.5
    p3_ca = [0.5 * p2_a[0], 0.5 + 0.5 * p2_a[1], 0.5 * p2_a[2], 0.5 * p2_a[3]]
    assert model.distribution((C, A)).tolist() == pytest.approx(p3_ca)
    # never seen: dd falls to d, which falls to p1
    assert model.distribution((D, D)).tolist() == pytest.approx([0.375, 0.25, 0.25, 0.125])


def brute_force_kn(corpus: list[int], V: int, context: tuple[int, int]) -> list[float]:
    """Interpolated modified Kneser-Ney written out with dictionaries, from
    Chen & Goodman 1998 (section 3), for the vectorized one to agree with:
    the probability of every id after ``context``."""
    tri = Counter(zip(corpus, corpus[1:], corpus[2:]))
    bi = Counter((v, x) for (_, v, x) in tri)  # distinct u before vx
    uni = Counter(x for (_, x) in bi)  # distinct v before x
    d3, d2, d1 = (modified_kn_discounts(np.array(list(c.values()))) for c in (tri, bi, uni))

    def kept(d, c):  # max(c - D(c), 0)
        return max(c - d[min(c, 3)], 0) if c else 0.0

    u, v = context
    gamma1 = sum(d1[min(c, 3)] for c in uni.values())
    v_seen = {x: c for (a, x), c in bi.items() if a == v}
    uv_seen = {x: c for (a, b, x), c in tri.items() if (a, b) == (u, v)}
    probs = []
    for w in range(V):
        p = (kept(d1, uni[w]) + gamma1 / V) / sum(uni.values())
        if v_seen:
            p = (kept(d2, v_seen.get(w, 0)) + sum(d2[min(c, 3)] for c in v_seen.values()) * p) \
                / sum(v_seen.values())
        if uv_seen:
            p = (kept(d3, uv_seen.get(w, 0)) + sum(d3[min(c, 3)] for c in uv_seen.values()) * p) \
                / sum(uv_seen.values())
        probs.append(p)
    return probs


def test_kneser_ney_matches_a_literal_implementation():
    # Zipf-distributed over 60 ids (and a 61st never seen), so that every
    # order has n-grams seen 1, 2, 3 and 4 times: the closed-form discounts.
    rng = np.random.default_rng(1)
    zipf = 1 / np.arange(1, 61)
    corpus = rng.choice(60, size=1000, p=zipf / zipf.sum())
    model = KneserNeyTrigram(corpus, 61)
    assert not np.allclose(model.d3_4[1:], FALLBACK_DISCOUNTS)
    assert not np.allclose(model.d2_4[1:], FALLBACK_DISCOUNTS)
    for context in [(0, 0), (0, 1), (1, 0), (59, 3), (60, 60), (0, 60)]:
        assert model.distribution(context).tolist() == pytest.approx(
            brute_force_kn(corpus.tolist(), 61, context), rel=1e-12)


@pytest.mark.parametrize("model_cls", COUNT_MODELS)
def test_window_probs_see_only_their_own_row(model_cls):
    model = model_cls(TINY, 4)
    rows_BW = np.array([[A, B, A], [C, A, B]])
    probs_BW = model.window_probs(rows_BW)
    for b, row in enumerate(rows_BW):
        for w in range(3):  # the first token of a row has no context, the second one token
            assert probs_BW[b, w] == pytest.approx(model.distribution(tuple(row[:w]))[row[w]])
