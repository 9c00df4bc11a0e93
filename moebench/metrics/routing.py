"""Routing metrics accumulated over batches from the blocks' LayerStats."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from moebench.metrics.balance import balance_metrics
from moebench.metrics.specialization import fixed_map_agreement, normalized_mutual_info
from moebench.moe.block import LayerStats
from moebench.routers.base import routing_entropy


@dataclass
class _LayerTotals:
    routed_E: Tensor  # float64, on the CPU
    hist: Tensor  # tokens reaching 0, 1, ..., E experts
    dropped: int = 0
    entropy_sum: float = 0.0
    entropy_batches: int = 0
    top_expert: list[Tensor] = field(default_factory=list)


class RoutingAccumulator:
    """Sums what each MoE layer did over many batches.

    With ``keep_tokens`` the per-token top experts are kept (on the CPU) for
    the specialization metrics; evaluation does this, training does not.
    """

    def __init__(self, keep_tokens: bool = False) -> None:
        self.keep_tokens = keep_tokens
        self.layers: list[_LayerTotals] = []
        self.token_ids: list[Tensor] = []
        self.cluster_ids: list[Tensor] = []

    def add(self, stats: list[LayerStats], token_ids_T: Tensor | None = None,
            cluster_ids_T: Tensor | None = None) -> None:
        if not self.layers:
            E = stats[0].routed_E.numel() if stats else 0
            self.layers = [_LayerTotals(torch.zeros(E, dtype=torch.double),
                                        torch.zeros(E + 1, dtype=torch.long)) for _ in stats]
        for totals, s in zip(self.layers, stats):
            totals.routed_E += s.routed_E.detach().double().cpu()
            totals.hist += torch.bincount(s.experts_per_token_T.detach().long().cpu(),
                                          minlength=totals.hist.numel())
            totals.dropped += int(s.dropped)
            if s.logits_TE is not None:
                totals.entropy_sum += float(routing_entropy(s.logits_TE.float()))
                totals.entropy_batches += 1
            if self.keep_tokens:
                totals.top_expert.append(s.top_expert_T.detach().cpu())
        if self.keep_tokens and token_ids_T is not None:
            self.token_ids.append(token_ids_T.detach().reshape(-1).cpu())
        if self.keep_tokens and cluster_ids_T is not None:
            self.cluster_ids.append(cluster_ids_T.detach().reshape(-1).cpu())

    def summary(self) -> dict:
        """Each metric averaged over MoE layers, plus the ``per_layer`` values."""
        if not self.layers:
            return {}
        per_layer = [self._layer_summary(t) for t in self.layers]
        out = {key: sum(layer[key] for layer in per_layer) / len(per_layer) for key in per_layer[0]}
        hist = sum(t.hist for t in self.layers).double()
        out["experts_per_token_share"] = (hist / hist.sum()).tolist()
        out["per_layer"] = per_layer
        return out

    def _layer_summary(self, t: _LayerTotals) -> dict[str, float]:
        routed = float(t.routed_E.sum())
        out = {"drop_rate": t.dropped / routed if routed else 0.0,
               "no_expert_rate": float(t.hist[0] / t.hist.sum()),
               **balance_metrics(t.routed_E)}
        if t.entropy_batches:
            out["routing_entropy"] = t.entropy_sum / t.entropy_batches
        if t.top_expert:
            expert_N = torch.cat(t.top_expert)
            reached_N = expert_N >= 0
            if self.cluster_ids:
                clusters_N = torch.cat(self.cluster_ids)
                out["nmi_cluster"] = normalized_mutual_info(expert_N[reached_N], clusters_N[reached_N])
            if self.token_ids:
                tokens_N = torch.cat(self.token_ids)[reached_N]
                out["nmi_token"] = normalized_mutual_info(expert_N[reached_N], tokens_N)
                out["fixed_map_agreement"] = fixed_map_agreement(tokens_N, expert_N[reached_N])
        return out
