"""Analytic forward FLOPs per token and active parameters.

FLOPs count 2 per multiply-add of every matrix product, the convention of
``torch.utils.flop_counter`` (and of Kaplan et al. 2020, section 2.1);
elementwise work (activations, norms, softmax) is left out, under 1% at the
sizes here. Attention scores count the full L x L product, as the flop
counter does for scaled_dot_product_attention, causal or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from torch import nn

if TYPE_CHECKING:
    from moebench.moe.block import LayerStats


def linear_flops(d_in: int, d_out: int) -> float:
    return 2.0 * d_in * d_out


def ffn_flops(d_model: int, d_ff: int, activation: str) -> float:
    hidden = 2 * d_ff if activation == "swiglu" else d_ff
    return linear_flops(d_model, hidden) + linear_flops(d_ff, d_model)


def attention_flops(d_model: int, context: int) -> dict[str, float]:
    return {
        "attention_proj": linear_flops(d_model, 3 * d_model) + linear_flops(d_model, d_model),
        "attention_scores": 2 * 2.0 * context * d_model,  # Q K^T and A V
    }


class CostedLayer(Protocol):
    """An FFN layer that knows its cost given what it did in a forward pass."""

    def flops_per_token(self, stats: LayerStats | None) -> dict[str, float]: ...

    def active_params(self, stats: LayerStats | None) -> float: ...


class CostedModel(Protocol):
    def ffn_layers(self) -> Sequence[CostedLayer]: ...

    def base_flops_per_token(self, context: int) -> dict[str, float]: ...


def add_into(total: dict[str, float], part: dict[str, float]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value


def cost_metrics(model: CostedModel, layer_stats: Sequence[LayerStats | None], context: int) -> dict:
    """FLOPs per token by component, their total, and active/total parameters.

    ``layer_stats`` is aligned with ``model.ffn_layers()`` (None for dense
    layers). Active parameters: all parameters minus those of the experts a
    token did not use, counted with the measured mean experts per token.
    """
    breakdown = dict(model.base_flops_per_token(context))
    total_params = param_count(model)  # type: ignore[arg-type]
    active = float(total_params)
    for layer, stats in zip(model.ffn_layers(), layer_stats):
        add_into(breakdown, layer.flops_per_token(stats))
        active += layer.active_params(stats) - param_count(layer)  # type: ignore[arg-type]
    return {
        "flops_per_token": sum(breakdown.values()),
        "flops_breakdown": breakdown,
        "active_params": active,
        "total_params": total_params,
    }


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
