"""Oracle routing for tasks with known latent clusters (the synthetic task).

Each token goes to expert ``cluster % E`` with weight 1: the routing a
learned router would ideally discover. Not a method from the literature but
the reference point the synthetic task's quality is reported against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.errors import ConfigError
from moebench.routers import ROUTERS
from moebench.routers.base import Router, RouterConfig, RouterContext, RouterOutput, SparseRouting


@dataclass
class OracleConfig(RouterConfig):
    name: str = "oracle"


@ROUTERS.register("oracle", OracleConfig)
class OracleRouter(Router):
    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        if ctx.cluster_ids_T is None:
            raise ConfigError("router.name", "oracle", "tasks that know latent clusters (task=synthetic)")
        expert_T = ctx.cluster_ids_T % self.num_experts
        T = expert_T.numel()
        ones_T = torch.ones(T, device=x_TD.device)
        routing = SparseRouting(
            token_idx_A=torch.arange(T, device=x_TD.device),
            expert_idx_A=expert_T,
            weight_A=ones_T,
            choice_A=torch.zeros_like(expert_T),
            score_A=ones_T,
        )
        return RouterOutput(routing, logits_TE=None)

    def flops_per_token(self) -> dict[str, float]:
        return {}  # a table lookup, no gate
