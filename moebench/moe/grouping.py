"""Routing groups: which tokens are routed together (``moe.routing_groups``).

all       one group: every token of the batch (the default).
position  one group per sequence position: the B tokens at position l of the
          B sequences of the batch, each group routed, dispatched (capacity
          per group) and combined on its own.
auto      position on a causal model for a configuration that would
          otherwise let a position see later ones (:func:`needs_position_groups`),
          all otherwise: every router causal-safe, and the ones that decide
          each token alone keep the whole batch as their group.

Why ``position`` exists: a router that compares tokens (expert choice, Soft
MoE, BASE's and S-BASE's balanced assignments) decides a token's experts from
the other tokens of its group, and so does a capacity that drops by score, or
that keeps every first choice before any second one (top-k with k >= 2). With
all tokens in one group, position t of a causal language model then depends
on positions after t of its own sequence: its perplexity is not a fair
number. Within a position group every token sits at the same position, so
nothing after t is ever compared with t. (Tokens at t still depend on other
sequences' tokens at t, as in any batch-level routing; that is no view of the
future.)

The L groups are routed in one call, not one call per position: every
routing rule takes a group dimension (``RouterContext.num_groups``), and the
dispatcher applies capacity per (expert, group). State a router moves in
training (loss-free balancing's biases, k-means' centroids, RL's reward
baseline) moves once per step from all groups' tokens, as under ``all``.

:func:`future_leak` names the leaks known from the configuration, which a
causal task refuses (moebench/validation.py); the causality probe
(moebench/metrics/causality.py) measures every run, whatever the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from torch import Tensor

from moebench.routers.base import Router, RouterConfig, RouterContext, is_dropless

if TYPE_CHECKING:
    from moebench.config import MoEConfig
    from moebench.moe.block import LayerStats

ROUTING_GROUPS = ("all", "position", "auto")


def future_leak(router_cls: type[Router], router_cfg: RouterConfig, moe: MoEConfig) -> str | None:
    """Why this configuration lets a position see later positions of its sequence,
    or None. Top-k capacity (k >= 2) is not named here: ``router.k`` does not say
    how many choices every router makes; the probe measures it."""
    if moe.routing_groups in ("position", "auto"):
        return None
    if router_cls.uses_other_tokens:
        return f"router {router_cfg.name} decides a token's experts from other tokens of its sequence"
    if moe.drop_policy == "score" and not is_dropless(router_cfg, moe):
        return "moe.drop_policy=score drops a token by comparing its score with later tokens'"
    return None


def needs_position_groups(router_cls: type[Router], router_cfg: RouterConfig, moe: MoEConfig) -> bool:
    """Whether ``moe.routing_groups=auto`` routes by position on a causal
    model: for a rule that compares tokens, and for a capacity that can let a
    later token evict an earlier one (by score, or first choices before
    second ones when a token makes k >= 2 choices); a rule that decides each
    token alone, under a capacity that drops by position, keeps the whole
    batch as its group, as Switch and GShard route."""
    if router_cls.uses_other_tokens:
        return True
    capacity = not is_dropless(router_cfg, moe)
    return capacity and (moe.drop_policy == "score" or router_cfg.k >= 2)


def route_by_position(
    route: Callable[[Tensor, RouterContext], tuple[Tensor, LayerStats]],
    x_TD: Tensor,
    ctx: RouterContext,
) -> tuple[Tensor, LayerStats]:
    """``route`` once over all position groups, in one batched call.

    Tokens are laid out ``[B, L]`` (``ctx.batch_shape``); they are reordered
    position-major, so that the L position groups are consecutive runs of B
    tokens (``RouterContext.num_groups = L``), routed, and put back in token
    order. Per-token tasks have no positions: their B examples form one group.
    """
    if ctx.batch_shape is None:
        return route(x_TD, ctx)
    B, L = ctx.batch_shape

    def by_position(t_T: Tensor | None) -> Tensor | None:  # [B, L, ...] -> [L, B, ...]
        return None if t_T is None else t_T.view(B, L, *t_T.shape[1:]).transpose(0, 1).reshape(t_T.shape)

    def by_sequence(t_T: Tensor | None) -> Tensor | None:  # [L, B, ...] -> [B, L, ...]
        return None if t_T is None else t_T.view(L, B, *t_T.shape[1:]).transpose(0, 1).reshape(t_T.shape)

    def in_token_order(index_R: Tensor | None) -> Tensor | None:  # position-major l B + b -> b L + l
        return None if index_R is None else (index_R % B) * L + index_R // B

    group_ctx = replace(ctx, token_ids_T=by_position(ctx.token_ids_T), num_groups=L,
                        cluster_ids_T=by_position(ctx.cluster_ids_T), batch_shape=None)
    y_TD, stats = route(by_position(x_TD), group_ctx)

    grouped_hook, on_token_loss = stats.on_token_loss, None
    if grouped_hook is not None:
        def on_token_loss(token_losses_T: Tensor, counted_T: Tensor) -> dict[str, Tensor]:
            return grouped_hook(by_position(token_losses_T), by_position(counted_T))

    return by_sequence(y_TD), replace(
        stats,
        experts_per_token_T=by_sequence(stats.experts_per_token_T),
        top_expert_T=by_sequence(stats.top_expert_T),
        dropped_T=by_sequence(stats.dropped_T),
        row_token_R=in_token_order(stats.row_token_R),
        logits_TE=by_sequence(stats.logits_TE),
        on_token_loss=on_token_loss,
        routing_groups=L,
    )
