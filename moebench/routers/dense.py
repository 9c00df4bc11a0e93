"""The dense baseline: no routing, a plain FFN in place of every MoE layer.

    params=active  width k * d_ff (k = router.k): the active width of a top-k
                   MoE, so equal FLOPs per token (the usual "FLOP-matched
                   dense baseline", e.g. Fedus et al. 2021, section 3);
    params=total   width E * d_ff: as many parameters as the MoE's experts.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from moebench.config import ModelConfig, MoEConfig
from moebench.errors import ConfigError
from moebench.models.ffn import DenseLayer
from moebench.routers import ROUTERS
from moebench.routers.base import DataStats, Router, RouterConfig

PARAMS = ("active", "total")


@dataclass
class DenseConfig(RouterConfig):
    params: str = "active"  # active | total

    def __post_init__(self) -> None:
        if self.params not in PARAMS:
            raise ConfigError("router.params", self.params, PARAMS)


@dataclass
class DenseTotalConfig(DenseConfig):
    params: str = "total"


@ROUTERS.register("dense_total", DenseTotalConfig)  # a name, so sweeps can list both baselines
@ROUTERS.register("dense", DenseConfig)
class DenseRouter(Router):
    """Never instantiated: its layer is a plain FFN, not an MoE block."""

    learns_routing = False  # no router: router.freeze has nothing to fix
    sends_rows = False  # no experts: nothing to exchange

    @classmethod
    def build_layer(cls, router_cfg: DenseConfig, model_cfg: ModelConfig, moe_cfg: MoEConfig,
                    data: DataStats) -> nn.Module:
        experts = router_cfg.k if router_cfg.params == "active" else moe_cfg.num_experts
        return DenseLayer(model_cfg.d_model, experts * model_cfg.d_ff, model_cfg.activation)
