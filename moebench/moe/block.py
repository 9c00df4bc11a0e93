"""The MoE block: Router -> Dispatch -> Experts -> Combine.

Statistics travel back with the output (:class:`LayerStats`), never through
module attributes, so nothing has to be reset between steps.

Cost on a CPU: besides its FLOPs a block does a fixed amount of work per
layer and step that a dense FFN does not: the gate, a few sorts and gathers
of the assignments (moe/dispatch.py), E small matmul pairs instead of one
large one, and an index-add to combine. A model whose dense step is short
cannot hide it: on the synthetic task (`tiny`, 14 ms a dense step, 71k
tokens/s), top1, rl, sbase and kmeans reach 0.41-0.46x of the equal-FLOPs
dense model's FLOP/s, against 0.56-0.94x on the language tasks, whose steps
are 2-5x longer (results/bench/train_step_cpu.json).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from moebench.metrics.flops import param_count
from moebench.moe.dispatch import DispatchPlan, capacity, plan_dispatch
from moebench.moe.experts import Experts
from moebench.moe.grouping import route_by_position
from moebench.routers.base import Router, RouterContext, RouterOutput, SoftRouting, token_groups


@dataclass
class LayerStats:
    """What one MoE layer did in one forward pass (all tensors detached).

    A new per-token field (``_T``), or one holding token indices, must also
    be put back in token order in moe/grouping.py.
    """

    routed_E: Tensor  # assignments (or soft mass) per expert before capacity
    kept_E: Tensor  # after capacity
    expert_rows: int  # rows the experts processed: kept assignments, or slots
    dropped: int  # assignments dropped by capacity
    experts_per_token_T: Tensor  # kept assignments per token (0: reached no expert)
    top_expert_T: Tensor  # each token's highest-weight kept expert; -1 if none
    dropped_T: Tensor | None = None  # each token's assignments dropped by capacity
    # The rows the experts processed, for the experts' cost (MoEBlock.flops_per_token)
    # and the communication metrics (metrics/communication.py): the token each
    # starts from (a Soft MoE slot: the first token of its group) and its
    # expert; and the bytes of one row.
    row_token_R: Tensor | None = None
    row_expert_R: Tensor | None = None
    row_bytes: int = 0
    logits_TE: Tensor | None = None
    aux_losses: dict[str, Tensor] = field(default_factory=dict)  # not detached
    on_token_loss: Callable[[Tensor, Tensor], dict[str, Tensor]] | None = None
    routing_groups: int = 1  # groups routed separately (moe/grouping.py)
    # Router state worth following over training (loss-free balancing's
    # biases): the metrics keep the latest value and curve points record it.
    diagnostics: dict[str, Tensor] = field(default_factory=dict)

    @property
    def routed(self) -> int:
        return int(self.routed_E.sum())


class MoEBlock(nn.Module):
    def __init__(
        self,
        router: Router,
        experts: Experts,
        k: int,
        capacity_factor: float,
        eval_capacity_factor: float,
        dropless: bool,
        drop_policy: str,
        routing_groups: str = "all",
    ) -> None:
        super().__init__()
        self.router, self.experts, self.k = router, experts, k
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.dropless, self.drop_policy = dropless, drop_policy
        # all | position | position_if_causal (moe.routing_groups=auto; moe/grouping.py)
        self.routing_groups = routing_groups

    def flops_per_token(self, stats: LayerStats | None) -> dict[str, float]:
        """Router (Soft MoE's mixing included) and experts as executed: each
        expert's measured rows through that expert (experts may differ in cost)."""
        assert stats is not None
        T = stats.experts_per_token_T.numel()
        flops = dict(self.router.flops_per_token())
        flops["experts"] = self.experts.flops(self._rows_E(stats)) / T
        return flops

    def active_params(self, stats: LayerStats | None) -> float:
        """Router parameters plus the experts a token uses, on average: the mean
        experts per token, shared among the experts as their rows are."""
        assert stats is not None
        mean_experts = float(stats.experts_per_token_T.float().mean())
        rows_E = self._rows_E(stats)
        uses_E = rows_E * (mean_experts / max(int(rows_E.sum()), 1))
        return param_count(self.router) + self.experts.params_per_token(uses_E)

    def _rows_E(self, stats: LayerStats) -> Tensor:
        """Rows each expert processed: kept assignments, or slots."""
        return torch.bincount(stats.row_expert_R, minlength=self.experts.num_experts)

    def forward(self, x: Tensor, ctx: RouterContext) -> tuple[Tensor, LayerStats]:
        x_TD = x.reshape(-1, x.shape[-1])
        if self.routing_groups == "position" or (self.routing_groups == "position_if_causal" and ctx.causal):
            y_TD, stats = route_by_position(self._route, x_TD, ctx)
        else:
            y_TD, stats = self._route(x_TD, ctx)
        return y_TD.reshape(x.shape), stats

    def _route(self, x_TD: Tensor, ctx: RouterContext) -> tuple[Tensor, LayerStats]:
        """Router -> dispatch -> experts -> combine, over ``ctx.num_groups`` routing groups."""
        out = self.router(x_TD, ctx)
        if isinstance(out.routing, SoftRouting):
            y_TD, stats = self._soft(x_TD, out.routing)
        else:
            y_TD, stats = self._sparse(x_TD, out, ctx.num_groups)
        stats.logits_TE = None if out.logits_TE is None else out.logits_TE.detach()
        stats.aux_losses, stats.on_token_loss = out.aux_losses, out.on_token_loss
        return y_TD, stats

    def _sparse(self, x_TD: Tensor, out: RouterOutput, num_groups: int) -> tuple[Tensor, LayerStats]:
        T, E = x_TD.shape[0], self.experts.num_experts
        cf = self.capacity_factor if self.training else self.eval_capacity_factor
        cap = None if self.dropless else capacity(T // num_groups, E, self.k, cf)
        plan = plan_dispatch(out.routing, T, E, cap, self.drop_policy, num_groups)
        y_TD = self.experts(x_TD, plan.token_idx_R, plan.counts_E, plan.weight_R)
        return y_TD, LayerStats(
            routed_E=plan.routed_E,
            kept_E=plan.counts_E,
            expert_rows=plan.token_idx_R.numel(),
            dropped=plan.dropped,
            experts_per_token_T=plan.experts_per_token_T,
            dropped_T=plan.dropped_T,
            top_expert_T=_top_expert(plan, T),
            row_token_R=plan.token_idx_R,
            row_expert_R=plan.expert_idx_R,
            row_bytes=x_TD.shape[1] * x_TD.element_size(),
        )

    def _soft(self, x_TD: Tensor, routing: SoftRouting) -> tuple[Tensor, LayerStats]:
        # Soft MoE (Puigcerver et al. 2023, eqs. 1-3), in each group on its own:
        # slots X~ = D^T X go through the same expert FFNs, S per expert and
        # group, expert by expert; Y = C Y~.
        (T, D), E, S = x_TD.shape, self.experts.num_experts, routing.slots_per_expert
        G, L = routing.dispatch_GLN.shape[:2]
        slots_GND = routing.dispatch_GLN.transpose(1, 2).to(x_TD.dtype) @ token_groups(x_TD, G)
        slots_RD = slots_GND.view(G, E, S, D).transpose(0, 1).reshape(E * G * S, D)
        rows_R = torch.arange(E * G * S, device=x_TD.device)
        counts_E = torch.full((E,), G * S, device=x_TD.device, dtype=torch.long)
        y_RD = self.experts(slots_RD, rows_R, counts_E, torch.ones_like(rows_R, dtype=x_TD.dtype))
        y_GND = y_RD.view(E, G, S, D).transpose(0, 1).reshape(G, E * S, D)
        y_TD = (routing.combine_GLN.to(x_TD.dtype) @ y_GND).flatten(0, 1)[:T]
        mass_TE = routing.combine_GLN.detach().flatten(0, 1)[:T].view(T, E, S).sum(-1)
        return y_TD, LayerStats(
            routed_E=mass_TE.sum(0),
            kept_E=mass_TE.sum(0),
            expert_rows=E * G * S,
            dropped=0,
            experts_per_token_T=torch.full((T,), E, device=x_TD.device),
            top_expert_T=mass_TE.argmax(-1),
            row_token_R=L * torch.arange(G, device=x_TD.device).repeat_interleave(S).repeat(E),
            row_expert_R=torch.arange(E, device=x_TD.device).repeat_interleave(G * S),
            row_bytes=D * x_TD.element_size(),
        )


def _top_expert(plan: DispatchPlan, num_tokens: int) -> Tensor:
    weight_R = plan.weight_R.detach().float()
    best_T = torch.full((num_tokens,), float("-inf"), device=weight_R.device)
    best_T = best_T.scatter_reduce(0, plan.token_idx_R, weight_R, reduce="amax")
    is_best = weight_R == best_T[plan.token_idx_R]
    top_T = torch.full((num_tokens,), -1, dtype=torch.long, device=weight_R.device)
    top_T[plan.token_idx_R[is_best]] = plan.expert_idx_R[is_best]
    return top_T
