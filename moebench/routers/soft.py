"""Soft MoE (Puigcerver et al. 2023, arXiv:2308.00951, section 2).

No token is assigned anywhere. The tokens of one group (one sequence) meet
its N = E * S slots (S per expert) through parameters Phi (D x N):

    logits = scale * l2norm(X) l2norm(Phi)   the paper's normalization, scale learned
    D = softmax of the logits over tokens     dispatch: each slot a convex mix of the group's tokens
    C = softmax of the logits over slots      combine: each output a convex mix of the group's slots

The slots X~ = D^T X go through the same expert FFNs as every other router, S
per expert and group, and Y = C Y~ (MoEBlock._soft). For metrics and the
stability losses the per-expert logits are the log-sum-exp over each expert's
slots, whose softmax is the combine mass a token gives each expert.

Groups and slots follow the paper and its code (vmoe,
``projects/soft_moe/router.py``): every sequence is its own group (vmoe's
groups are the images of a batch), and the slots per expert come from a
capacity factor, S = ceil(capacity_factor * group_size / E), 1.0 by default,
so a group has about as many slots as tokens and the experts process about
one row per token, as top-1 routing does. vmoe rounds to the nearest
integer; moebench rounds up, as its capacity C = ceil(cf * k * T / E)
(moe/dispatch.py). ``router.slots_per_expert`` sets S directly (vmoe's
``num_slots``). ``group_size`` (default ``model.block_size``, the sequence
length) sizes the slots; on a task whose tokens are independent examples (the
synthetic task: no sequences, ``RouterContext.batch_shape`` is None),
consecutive examples form groups of at most ``group_size``, as many tokens
as a sequence of the same preset, so the slots per token and the mixing cost
are those of the sequence tasks. (A group of one example would be the dense
softmax MoE at E times the expert FLOPs; the whole batch as one group would
make the mixing cost grow with the batch.)

Every slot mixes all the tokens of its group: each output depends on every
other token of its own sequence, later positions included, so on a causal
task Soft MoE leaks the future (moe/grouping.py) and is flagged; sequences
never mix. Its numbers count on the non-causal tasks (synthetic, masked LM).
Under ``moe.routing_groups=position`` a group is the B tokens at one
position, while the slots stay sized for a sequence: set
``router.slots_per_expert`` (or ``group_size``) to B's scale there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor, nn

from moebench.config import ModelConfig, MoEConfig
from moebench.errors import ConfigError
from moebench.metrics.flops import linear_flops
from moebench.routers import ROUTERS
from moebench.routers.base import (
    DataStats, Router, RouterConfig, RouterContext, RouterOutput, SoftRouting, float32_gate,
    token_groups,
)


@dataclass
class SoftConfig(RouterConfig):
    # S = ceil(capacity_factor * group_size / E) slots per expert (vmoe's default 1.0).
    capacity_factor: float = 1.0
    slots_per_expert: Optional[int] = None  # S itself (vmoe's num_slots); null: from capacity_factor
    # Tokens of a group the slots are sized for, and the group of a task without
    # sequences (synthetic); null: model.block_size. A sequence is always one group.
    group_size: Optional[int] = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.capacity_factor) and self.capacity_factor > 0):
            raise ConfigError("router.capacity_factor", self.capacity_factor, "a finite number > 0")
        if self.slots_per_expert is not None and self.slots_per_expert < 1:
            raise ConfigError("router.slots_per_expert", self.slots_per_expert, "null or an integer >= 1")
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError("router.group_size", self.group_size, "null or an integer >= 1")


def slots_per_expert(cfg: SoftConfig, num_experts: int) -> int:
    """S: as configured, or ceil(capacity_factor * group_size / E) (at least 1)."""
    if cfg.slots_per_expert is not None:
        return cfg.slots_per_expert
    if cfg.group_size is None:
        raise ConfigError("router.group_size", None, "an integer >= 1 when router.slots_per_expert is null")
    return math.ceil(cfg.capacity_factor * cfg.group_size / num_experts)


def num_groups(num_tokens: int, ctx: RouterContext, group_size: int | None) -> int:
    """G: the routing groups when the block forms them (``ctx.num_groups``,
    e.g. positions), else one group per sequence; independent examples (no
    ``batch_shape``) in ceil(T / group_size) groups of consecutive examples,
    as even as can be (:func:`~moebench.routers.base.token_groups`), or one
    without a group size."""
    if ctx.num_groups > 1:
        return ctx.num_groups
    if ctx.batch_shape is not None:
        return ctx.batch_shape[0]
    return 1 if group_size is None else math.ceil(num_tokens / group_size)


def soft_routing(logits_GLN: Tensor, padding_GL: Tensor, slots_per_expert: int) -> SoftRouting:
    """Dispatch weights normalized over each group's tokens (padding gets 0),
    combine weights over its slots."""
    dispatch_GLN = torch.softmax(logits_GLN.masked_fill(padding_GL[..., None], float("-inf")), dim=1)
    return SoftRouting(dispatch_GLN, torch.softmax(logits_GLN, dim=2), slots_per_expert)


@ROUTERS.register("soft", SoftConfig)
class SoftRouter(Router):
    has_gate = False
    uses_other_tokens = True

    def __init__(self, cfg: SoftConfig, d_model: int, num_experts: int, data: DataStats) -> None:
        super().__init__(cfg, d_model, num_experts, data)
        self.slots_per_expert = slots_per_expert(cfg, num_experts)
        N = num_experts * self.slots_per_expert
        self.slots_DN = nn.Parameter(torch.randn(d_model, N) / math.sqrt(d_model))  # Phi
        self.scale = nn.Parameter(torch.ones(()))

    @classmethod
    def build_layer(cls, router_cfg: SoftConfig, model_cfg: ModelConfig, moe_cfg: MoEConfig,
                    data: DataStats) -> nn.Module:
        """The standard block, with groups of ``model.block_size`` tokens unless configured."""
        group_size = router_cfg.group_size or model_cfg.block_size
        return super().build_layer(replace(router_cfg, group_size=group_size), model_cfg, moe_cfg, data)

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        T, E, S = x_TD.shape[0], self.num_experts, self.slots_per_expert
        G = num_groups(T, ctx, self.cfg.group_size)
        x_GLD = token_groups(nn.functional.normalize(x_TD.float(), dim=-1), G)
        slots_ND = nn.functional.normalize(self.slots_DN.float(), dim=0).t()
        logits_GLN = self.scale * float32_gate(x_GLD, slots_ND)
        padding_GL = torch.arange(x_GLD.shape[:2].numel(), device=x_TD.device).view(G, -1) >= T
        logits_TE = logits_GLN.flatten(0, 1)[:T].view(T, E, S).logsumexp(-1)
        return RouterOutput(soft_routing(logits_GLN, padding_GL, S), logits_TE)

    def flops_per_token(self) -> dict[str, float]:
        """The slot logits, and the mixing X~ = D^T X and Y = C Y~ (MoEBlock._soft):
        in each a token meets its group's N slots, D multiply-adds each. (The
        padding of a last, shorter group, less than one token a group, is left out.)"""
        D, N = self.slots_DN.shape
        return {"router": linear_flops(D, N), "soft_mixing": 2 * linear_flops(N, D)}
