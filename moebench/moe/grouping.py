"""Routing groups: which tokens are routed together (``moe.routing_groups``).

all       one group: every token of the batch (the default).
position  one group per sequence position: the B tokens at position l of the
          B sequences of the batch, each group routed, dispatched (capacity
          per group) and combined on its own.

Why ``position`` exists: a router that compares tokens (expert choice, Soft
MoE, BASE's and S-BASE's balanced assignments) decides a token's experts from
the other tokens of its group, and so does a capacity that drops by score, or
that keeps every first choice before any second one (top-k with k >= 2). With
all tokens in one group, position t of a causal language model then depends
on positions after t of its own sequence: its perplexity is not a fair
number. Within a position group every token sits at the same position, so
nothing after t is ever compared with t. (Tokens at t still depend on other
sequences' tokens at t, as in any batch-level routing; that is no view of the
future.) The cost: one routing per position, L small ones instead of one.

:func:`future_leak` names the leaks known from the configuration, which a
causal task refuses (moebench/validation.py); the causality probe
(moebench/metrics/causality.py) measures every run, whatever the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from moebench.routers.base import Router, RouterContext

if TYPE_CHECKING:
    from moebench.config import MoEConfig
    from moebench.moe.block import LayerStats

ROUTING_GROUPS = ("all", "position")


def future_leak(router_name: str, router_cls: type[Router], moe: MoEConfig) -> str | None:
    """Why this configuration lets a position see later positions of its sequence,
    or None. Top-k capacity (k >= 2) is not named here: ``router.k`` does not say
    how many choices every router makes; the probe measures it."""
    if moe.routing_groups == "position":
        return None
    if router_cls.uses_other_tokens:
        return f"router {router_name} decides a token's experts from other tokens of its sequence"
    if moe.drop_policy == "score" and not moe.dropless:
        return "moe.drop_policy=score drops a token by comparing its score with later tokens'"
    return None


def route_by_position(
    route: Callable[[Tensor, RouterContext], tuple[Tensor, LayerStats]],
    x_TD: Tensor,
    ctx: RouterContext,
) -> tuple[Tensor, LayerStats]:
    """Apply ``route`` to each position group and merge the results in token order.

    Tokens are laid out ``[B, L]`` (``ctx.batch_shape``); per-token tasks
    have no positions, their B examples form a single group.
    """
    B, L = ctx.batch_shape or (x_TD.shape[0], 1)

    def at(t_T: Tensor | None, pos: int) -> Tensor | None:
        return None if t_T is None else t_T.view(B, L, *t_T.shape[1:])[:, pos]

    def ungroup(parts: list[Tensor]) -> Tensor:
        return torch.stack(parts, dim=1).flatten(0, 1)  # [B, L, ...] -> [T, ...]

    outputs, groups = [], []
    for pos in range(L):
        group_ctx = replace(ctx, token_ids_T=at(ctx.token_ids_T, pos),
                            cluster_ids_T=at(ctx.cluster_ids_T, pos), batch_shape=None)
        y_BD, stats = route(at(x_TD, pos), group_ctx)
        outputs.append(y_BD)
        groups.append(stats)

    first = groups[0]
    on_token_loss = None
    if first.on_token_loss is not None:
        def on_token_loss(token_losses_T: Tensor, counted_T: Tensor) -> dict[str, Tensor]:
            per_group = [s.on_token_loss(at(token_losses_T, pos), at(counted_T, pos))
                         for pos, s in enumerate(groups)]
            return {name: torch.stack([g[name] for g in per_group]).mean() for name in per_group[0]}

    merged = replace(
        first,
        routed_E=torch.stack([s.routed_E for s in groups]).sum(0),
        kept_E=torch.stack([s.kept_E for s in groups]).sum(0),
        expert_rows=sum(s.expert_rows for s in groups),
        dropped=sum(s.dropped for s in groups),
        experts_per_token_T=ungroup([s.experts_per_token_T for s in groups]),
        top_expert_T=ungroup([s.top_expert_T for s in groups]),
        dropped_T=None if first.dropped_T is None else ungroup([s.dropped_T for s in groups]),
        logits_TE=None if first.logits_TE is None else ungroup([s.logits_TE for s in groups]),
        # Per-group losses averaged, as GShard averages its balance loss over groups.
        aux_losses={name: torch.stack([s.aux_losses[name] for s in groups]).mean()
                    for name in first.aux_losses},
        on_token_loss=on_token_loss,
        routing_groups=L,
        diagnostics=groups[-1].diagnostics,  # router state: the latest
    )
    return ungroup(outputs), merged
