"""Adaptive input and output layers for large word vocabularies.

Grave et al. 2017, "Efficient softmax approximation for GPUs"
(arXiv:1609.04309): the most frequent words and one entry per tail cluster
form the head, a softmax every token computes; each tail cluster of rarer
words has its own softmax behind a projection narrowed by ``div_value`` per
cluster. fairseq's WikiText-103 language models use it with cutoffs
20000,60000 of a 267k vocabulary and ``adaptive_softmax_factor`` 4 (the
``div_value`` here). The distribution is exact: p(w) = p_head(w) for a head
word, p_head(cluster of w) p_cluster(w) for a tail word, and
``torch.nn.AdaptiveLogSoftmaxWithLoss`` computes log p(w) at the target
exactly, so perplexities are exact for this (factorized) output
distribution.

The input embedding is cut into the same clusters (adaptive input, Baevski &
Auli 2019, "Adaptive Input Representations for Neural Language Modeling"),
as fairseq's WikiText-103 models pair the two: cluster i's words get
``d_model / div_value^i`` dimensions, projected to ``d_model``. A full
``V x d_model`` table would otherwise be most of the parameters that the
optimizer updates every step (33k x 128 on WikiText-2 at the ``tiny``
preset). Unlike fairseq (``tie_adaptive_weights``), input and output are
not tied here.

The clusters mean something only if the ids are ranked by frequency; the
corpora number words by first appearance (moebench/tasks/corpus.py), so each
layer maps an id to its rank in the training counts, a fixed permutation
held here, not in the cached data.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moebench.metrics.flops import linear_flops


def frequency_ranks(counts_V: Tensor) -> tuple[Tensor, Tensor]:
    """``(rank_of_id_V, id_of_rank_V)``: rank 0 the most frequent id (ties by id)."""
    id_of_rank_V = torch.argsort(counts_V, descending=True, stable=True)
    rank_of_id_V = torch.empty_like(id_of_rank_V)
    rank_of_id_V[id_of_rank_V] = torch.arange(len(counts_V))
    return rank_of_id_V, id_of_rank_V


class AdaptiveInput(nn.Module):
    """Token embeddings by frequency cluster (Baevski & Auli 2019; fairseq's
    ``AdaptiveInput``): the ids ranked below ``cutoffs[0]`` get ``d_model``
    dimensions, those in ``cutoffs[i-1]..cutoffs[i]`` ``d_model / div^i``;
    each cluster's table is projected to ``d_model`` (no bias), and
    initialized as fairseq's (normal, std dim^-0.5; Xavier projections).

    Every forward records its projections' FLOPs for :meth:`flops_per_token`."""

    def __init__(self, d_model: int, counts_V: Tensor, cutoffs: list[int], div_value: float) -> None:
        super().__init__()
        V = len(counts_V)
        self.d_model, self.bounds = d_model, [0, *cutoffs, V]
        self.tables = nn.ModuleList()
        self.projections = nn.ModuleList()
        for i, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
            dim = int(d_model // div_value**i)
            self.tables.append(nn.Embedding(hi - lo, dim))
            self.projections.append(nn.Linear(dim, d_model, bias=False))
            nn.init.normal_(self.tables[i].weight, std=dim**-0.5)
            nn.init.xavier_uniform_(self.projections[i].weight)
        self.register_buffer("rank_of_id_V", frequency_ranks(counts_V)[0])
        self.last_flops_per_token = 0.0

    def forward(self, idx_BL: Tensor) -> Tensor:
        ranks_BL = self.rank_of_id_V[idx_BL]
        x_BLD = self.projections[0].weight.new_empty(*idx_BL.shape, self.d_model)
        flops = 0.0
        for i, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
            in_cluster_BL = (ranks_BL >= lo) & (ranks_BL < hi)
            rows = int(in_cluster_BL.sum())
            proj = self.projections[i]
            x_BLD[in_cluster_BL] = proj(self.tables[i](ranks_BL[in_cluster_BL] - lo)).to(x_BLD.dtype)
            flops += rows * linear_flops(proj.in_features, proj.out_features)
        self.last_flops_per_token = flops / idx_BL.numel()
        return x_BLD

    def flops_per_token(self) -> float:
        """The projections' FLOPs in the last forward, per token."""
        return self.last_flops_per_token


class AdaptiveHead(nn.Module):
    """``torch.nn.AdaptiveLogSoftmaxWithLoss`` over ids ranked by training
    frequency. It computes only what is asked: losses at given targets (the
    head cluster for every row, a tail cluster for the rows whose target is
    in it), full log-probabilities, or predictions.

    The model calls :meth:`start` at every forward; the FLOPs of the loss
    computations since then are what :meth:`flops_per_token` reports, per
    token of that forward."""

    def __init__(self, d_model: int, counts_V: Tensor, cutoffs: list[int], div_value: float) -> None:
        super().__init__()
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(d_model, len(counts_V), cutoffs, div_value=div_value)
        rank_of_id_V, id_of_rank_V = frequency_ranks(counts_V)
        self.register_buffer("id_of_rank_V", id_of_rank_V)
        self.register_buffer("rank_of_id_V", rank_of_id_V)
        self.tokens, self.executed_flops = 0, 0.0

    def start(self, tokens: int) -> None:
        """A forward of ``tokens`` tokens begins: count the head's work afresh."""
        self.tokens, self.executed_flops = tokens, 0.0

    def token_losses(self, hidden_ND: Tensor, targets_N: Tensor) -> Tensor:
        """-log p(target) per row, float32 (the head runs in float32 under autocast too)."""
        ranks_N = self.rank_of_id_V[targets_N]
        self.executed_flops += self.loss_flops(ranks_N)
        with torch.autocast(hidden_ND.device.type, enabled=False):
            return -self.softmax(hidden_ND.float(), ranks_N).output

    def log_prob(self, hidden_ND: Tensor) -> Tensor:
        """``[N, V]`` log-probabilities over the vocabulary, in id order."""
        with torch.autocast(hidden_ND.device.type, enabled=False):
            return self.softmax.log_prob(hidden_ND.float())[:, self.rank_of_id_V]

    def predict(self, hidden_ND: Tensor) -> Tensor:
        """``[N]`` the most probable id per row (``log_prob(...).argmax(-1)``, computed lazily)."""
        with torch.autocast(hidden_ND.device.type, enabled=False):
            return self.id_of_rank_V[self.softmax.predict(hidden_ND.float())]

    def loss_flops(self, ranks_N: Tensor) -> float:
        """FLOPs of :meth:`token_losses` on these target ranks, as
        ``AdaptiveLogSoftmaxWithLoss.forward`` executes it: the head matmul
        (d x (cutoff_0 + clusters)) for every row, and cluster i's projection
        (d x d / div^(i+1)) and output (d / div^(i+1) x its words) for the rows
        whose target falls in it."""
        head = self.softmax.head
        flops = len(ranks_N) * linear_flops(head.in_features, head.out_features)
        for i, (proj, out) in enumerate(self.softmax.tail):
            lo, hi = self.softmax.cutoffs[i], self.softmax.cutoffs[i + 1]
            rows = int(((ranks_N >= lo) & (ranks_N < hi)).sum())
            flops += rows * (linear_flops(proj.in_features, proj.out_features)
                             + linear_flops(out.in_features, out.out_features))
        return flops

    def flops_per_token(self) -> float:
        """FLOPs of the losses computed since the last forward, per token of that forward."""
        return self.executed_flops / self.tokens if self.tokens else 0.0
