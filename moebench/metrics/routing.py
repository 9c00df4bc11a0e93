"""Routing metrics accumulated over batches from the blocks' LayerStats."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from moebench.distributed import gather_from_ranks
from moebench.metrics.balance import balance_metrics, usage_metrics
from moebench.metrics.communication import exchange_metrics
from moebench.metrics.expert_tokens import modal_expert, over_represented
from moebench.metrics.specialization import cross_counts, fixed_map_agreement, normalized_mutual_info
from moebench.moe.block import LayerStats
from moebench.routers.base import RouterContext, routing_entropy


# Per-expert loads go into records up to this many experts (PEER has a million).
MAX_EXPERTS_LISTED = 1024
# Each expert's most over-represented tokens listed in records (expert_tokens).
TOKENS_PER_EXPERT = 10


@dataclass
class _LayerTotals:
    routed_E: Tensor  # float64, on the CPU
    hist: Tensor  # tokens reaching 0, 1, ..., E experts
    dropped_L: Tensor | None = None  # dropped assignments by sequence position
    routed_L: Tensor | None = None
    dropped: int = 0
    entropy_sum: float = 0.0
    entropy_batches: int = 0
    top_expert: list[Tensor] = field(default_factory=list)
    comm: dict[str, float] = field(default_factory=dict)  # summed over batches
    comm_batches: int = 0
    diagnostics: dict[str, Tensor] = field(default_factory=dict)  # the latest values

    def add(self, other: _LayerTotals) -> None:
        """Another process's totals of this layer (training's: no tokens kept)."""
        self.routed_E += other.routed_E
        self.hist += other.hist
        self.dropped += other.dropped
        self.entropy_sum += other.entropy_sum
        self.entropy_batches += other.entropy_batches
        if other.dropped_L is not None:
            self.dropped_L += other.dropped_L
            self.routed_L += other.routed_L
        for key, value in other.comm.items():
            self.comm[key] = self.comm.get(key, 0.0) + value
        self.comm_batches += other.comm_batches


class RoutingAccumulator:
    """Sums what each MoE layer did over many batches.

    With ``keep_tokens`` the per-token top experts are kept (on the CPU) for
    the specialization metrics; evaluation does this, training does not. With
    ``comm_ranks`` the communication metrics simulate that many processes
    (``moe.comm_ranks``), averaged over batches; evaluation computes them,
    training does not (they read a few numbers back from the device per layer).
    """

    def __init__(self, keep_tokens: bool = False, comm_ranks: int | None = None) -> None:
        self.keep_tokens, self.comm_ranks = keep_tokens, comm_ranks
        self.layers: list[_LayerTotals] = []
        self.token_ids: list[Tensor] = []
        self.cluster_ids: list[Tensor] = []

    def add(self, stats: list[LayerStats], ctx: RouterContext | None = None) -> None:
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
            if ctx is not None and ctx.batch_shape is not None and s.dropped_T is not None:
                self._add_by_position(totals, s, ctx.batch_shape)
            if self.keep_tokens:
                totals.top_expert.append(s.top_expert_T.detach().cpu())
            if self.comm_ranks is not None and s.row_token_R is not None:
                comm = exchange_metrics(s.row_token_R.detach().cpu(), s.row_expert_R.detach().cpu(),
                                        s.experts_per_token_T.numel(), s.routed_E.numel(),
                                        self.comm_ranks, s.row_bytes)
                for key, value in comm.items():
                    totals.comm[key] = totals.comm.get(key, 0.0) + value
                totals.comm_batches += 1
            totals.diagnostics.update({k: v.detach().cpu() for k, v in s.diagnostics.items()})
        if self.keep_tokens and ctx is not None and ctx.token_ids_T is not None:
            self.token_ids.append(ctx.token_ids_T.detach().reshape(-1).cpu())
        if self.keep_tokens and ctx is not None and ctx.cluster_ids_T is not None:
            self.cluster_ids.append(ctx.cluster_ids_T.detach().reshape(-1).cpu())

    @staticmethod
    def _add_by_position(totals: _LayerTotals, s: LayerStats, batch_shape: tuple[int, int]) -> None:
        dropped_BL = s.dropped_T.detach().reshape(batch_shape).double().cpu()
        routed_BL = dropped_BL + s.experts_per_token_T.detach().reshape(batch_shape).double().cpu()
        if totals.dropped_L is None:
            totals.dropped_L, totals.routed_L = dropped_BL.sum(0), routed_BL.sum(0)
        else:
            totals.dropped_L += dropped_BL.sum(0)
            totals.routed_L += routed_BL.sum(0)

    def sum_over_ranks(self) -> None:
        """Add up every process's totals, on every process (expert parallelism:
        each routed its own shard), as one process routing every shard sums them."""
        gathered = gather_from_ranks(self.layers)
        self.layers = gathered[0]
        for other in gathered[1:]:
            for totals, theirs in zip(self.layers, other):
                totals.add(theirs)

    def summary(self) -> dict:
        """Each metric averaged over MoE layers, plus the ``per_layer`` values."""
        if not self.layers:
            return {}
        per_layer = [self._layer_summary(t) for t in self.layers]
        scalars = [k for k, v in per_layer[0].items() if isinstance(v, float)]
        out = {key: sum(layer[key] for layer in per_layer) / len(per_layer) for key in scalars}
        hist = sum(t.hist for t in self.layers).double()
        most = int(torch.nonzero(hist).max()) if hist.any() else 0  # not all E + 1 (PEER: 10^6)
        out["experts_per_token_share"] = (hist[: most + 1] / hist.sum()).tolist()
        if self.layers[0].dropped_L is not None:
            dropped_L = sum(t.dropped_L for t in self.layers)
            routed_L = sum(t.routed_L for t in self.layers)
            out["drop_rate_by_position"] = (dropped_L / routed_L.clamp_min(1)).tolist()
        out["per_layer"] = per_layer
        if any(t.diagnostics for t in self.layers):
            out["diagnostics"] = [{k: v.tolist() for k, v in t.diagnostics.items()} for t in self.layers]
        return out

    def modal_experts(self) -> tuple[Tensor, Tensor] | None:
        """Each layer's modal expert per token id (``[L, V]``, expert_tokens.modal_expert)
        and each id's count (``[V]``), V the largest kept id + 1; None without token ids."""
        if not self.token_ids or not self.layers:  # no token ids, or no MoE layer (dense)
            return None
        tokens_N = torch.cat(self.token_ids)
        V = int(tokens_N.max()) + 1
        modal_LV = torch.stack([modal_expert(torch.cat(t.top_expert), tokens_N, V) for t in self.layers])
        return modal_LV, torch.bincount(tokens_N, minlength=V)

    def _layer_summary(self, t: _LayerTotals) -> dict[str, float]:
        routed = float(t.routed_E.sum())
        out = {"drop_rate": t.dropped / routed if routed else 0.0,
               "no_expert_rate": float(t.hist[0] / t.hist.sum()),
               **balance_metrics(t.routed_E), **usage_metrics(t.routed_E)}
        if t.routed_E.numel() <= MAX_EXPERTS_LISTED:
            out["load_E"] = t.routed_E.tolist()
        if t.entropy_batches:
            out["routing_entropy"] = t.entropy_sum / t.entropy_batches
        out.update({key: total / t.comm_batches for key, total in t.comm.items()})
        if t.top_expert:
            expert_N = torch.cat(t.top_expert)
            reached_N = expert_N >= 0
            if self.cluster_ids:
                clusters_N = torch.cat(self.cluster_ids)
                out["nmi_cluster"] = normalized_mutual_info(expert_N[reached_N], clusters_N[reached_N])
                if t.routed_E.numel() <= MAX_EXPERTS_LISTED:
                    out["cluster_expert"] = cross_counts(clusters_N[reached_N], expert_N[reached_N],
                                                         t.routed_E.numel()).tolist()
            if self.token_ids:
                tokens_N = torch.cat(self.token_ids)[reached_N]
                out["nmi_token"] = normalized_mutual_info(expert_N[reached_N], tokens_N)
                out["fixed_map_agreement"] = fixed_map_agreement(tokens_N, expert_N[reached_N])
                if t.routed_E.numel() <= MAX_EXPERTS_LISTED:
                    listed = over_represented(expert_N[reached_N], tokens_N, t.routed_E.numel(),
                                              int(tokens_N.max()) + 1, top=TOKENS_PER_EXPERT)
                    out["expert_tokens"] = [[[token, count, round(lift, 3)] for token, count, lift in tops]
                                            for tops in listed]
        return out
