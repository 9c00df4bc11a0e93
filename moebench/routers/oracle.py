"""Oracle routing for tasks with known latent clusters (the synthetic task).

Each token goes to expert ``cluster % E`` with weight 1: the routing a
learned router would ideally discover. Not a method from the literature but
the reference point the synthetic task's quality is reported against.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from moebench.errors import ConfigError
from moebench.routers import ROUTERS
from moebench.routers.base import Router, RouterConfig, RouterContext, RouterOutput, one_expert_each


@dataclass
class OracleConfig(RouterConfig):
    name: str = "oracle"


@ROUTERS.register("oracle", OracleConfig)
class OracleRouter(Router):
    has_gate = False  # a table lookup: no parameters, so none counted in active_params
    learns_routing = False

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        if ctx.cluster_ids_T is None:
            raise ConfigError("router.name", "oracle", "tasks that know latent clusters (task=synthetic)")
        expert_T = ctx.cluster_ids_T % self.num_experts
        return RouterOutput(one_expert_each(expert_T), logits_TE=None)

    def flops_per_token(self) -> dict[str, float]:
        return {}  # a table lookup, no gate
