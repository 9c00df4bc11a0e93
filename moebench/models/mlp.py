"""A per-token residual MLP for the synthetic task: each token is routed alone."""

from __future__ import annotations

from torch import Tensor, nn

from moebench.config import ModelConfig
from moebench.metrics.flops import linear_flops
from moebench.models import ModelOutput
from moebench.models.ffn import FFNFactory
from moebench.routers.base import RouterContext


class TokenMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, d_in: int, d_out: int, ffn: FFNFactory) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, cfg.d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.d_model) for _ in range(cfg.n_layers))
        self.ffns = nn.ModuleList(ffn(i) for i in range(cfg.n_layers))
        self.ln_out = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, d_out)

    def forward(self, x_BI: Tensor, ctx: RouterContext) -> ModelOutput:
        x = self.inp(x_BI)
        stats = []
        for norm, ffn in zip(self.norms, self.ffns):
            y, layer_stats = ffn(norm(x), ctx)
            x = x + y
            stats.append(layer_stats)
        return ModelOutput(self.head(self.ln_out(x)), stats)

    def ffn_layers(self) -> list[nn.Module]:
        return list(self.ffns)

    def base_flops_per_token(self, context: int) -> dict[str, float]:
        return {"input": linear_flops(self.inp.in_features, self.inp.out_features),
                "head": linear_flops(self.head.in_features, self.head.out_features)}
