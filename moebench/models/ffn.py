"""Which FFN each layer gets: the configured router's layer, or a dense FFN.

Every FFN layer has one signature, ``layer(x, ctx) -> (y, LayerStats | None)``,
so models and the training loop never ask which router is inside.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from moebench.config import ModelConfig, MoEConfig
from moebench.metrics.flops import ffn_flops, param_count
from moebench.moe.block import LayerStats
from moebench.moe.experts import FeedForward
from moebench.routers.base import DataStats, RouterConfig, RouterContext


class LayerBuilder(Protocol):
    """What a registered router class provides: how to build its FFN layer."""

    @classmethod
    def build_layer(
        cls, router_cfg: RouterConfig, model_cfg: ModelConfig, moe_cfg: MoEConfig, data: DataStats
    ) -> nn.Module: ...


class DenseLayer(nn.Module):
    """A plain FFN behind the FFN-layer signature; reports no routing stats."""

    def __init__(self, d_model: int, d_ff: int, activation: str) -> None:
        super().__init__()
        self.d_model, self.d_ff, self.activation = d_model, d_ff, activation
        self.ffn = FeedForward(d_model, d_ff, activation)

    def forward(self, x: Tensor, ctx: RouterContext) -> tuple[Tensor, LayerStats | None]:
        return self.ffn(x), None

    def flops_per_token(self, stats: LayerStats | None) -> dict[str, float]:
        return {"ffn": ffn_flops(self.d_model, self.d_ff, self.activation)}

    def active_params(self, stats: LayerStats | None) -> float:
        return float(param_count(self))


class FFNFactory:
    """Builds layer i's FFN: an MoE layer every ``moe_every``-th layer, else dense."""

    def __init__(self, router_cfg: RouterConfig, model_cfg: ModelConfig, moe_cfg: MoEConfig,
                 data: DataStats) -> None:
        self.router_cfg, self.model_cfg, self.moe_cfg, self.data = router_cfg, model_cfg, moe_cfg, data

    def is_moe_layer(self, layer_idx: int) -> bool:
        return (layer_idx + 1) % self.model_cfg.moe_every == 0

    def __call__(self, layer_idx: int) -> nn.Module:
        m = self.model_cfg
        if not self.is_moe_layer(layer_idx):
            return DenseLayer(m.d_model, m.d_ff, m.activation)
        from moebench.routers import ROUTERS

        builder: LayerBuilder = ROUTERS.get(self.router_cfg.name).cls
        return builder.build_layer(self.router_cfg, m, self.moe_cfg, self.data)
