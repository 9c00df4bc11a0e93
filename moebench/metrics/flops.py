"""Analytic forward FLOPs per token and active parameters.

FLOPs count 2 per multiply-add of every matrix product, the convention of
``torch.utils.flop_counter`` (and of Kaplan et al. 2020, section 2.1);
elementwise work (activations, norms, softmax) is left out, under 1% at the
sizes here. Attention scores count the full L x L product, as the flop
counter does for scaled_dot_product_attention, causal or not.

Training routes differently from evaluation (top-2's random second expert,
the training capacity, RL's sampled expert, BASE's auction), so a forward is
costed from its own LayerStats: ``flops_per_token`` in the record is the
evaluation forward's, ``train_flops_per_token`` the mean over the training
steps (:class:`TrainFlops`), with each router's training-only work
(:class:`TrainingOnlyCost`) on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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


@runtime_checkable
class TrainingOnlyCost(Protocol):
    """Optional, for a router (any module inside an FFN layer) whose training
    forward does work that its evaluation forward does not, and that the
    layer's ``flops_per_token`` (experts as executed, the router's
    ``flops_per_token()``) leaves out: BASE's auction, S-BASE's Sinkhorn
    iterations, noisy top-k's noise gate, REINFORCE's learned baseline.

    It returns that work's forward FLOPs per token by component, given the
    layer's stats of the training forward; they are added to the training
    figure only. A router without it costs the same in both modes. Matrix
    products count as everywhere here; an iterative assignment (auction,
    Sinkhorn), elementwise but repeated over the [T, E] scores many times a
    step, counts one FLOP per score for each pass over them, as executed.
    """

    def training_only_flops_per_token(self, stats: LayerStats) -> dict[str, float]: ...


def add_into(total: dict[str, float], part: dict[str, float]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value


def forward_flops(model: CostedModel, layer_stats: Sequence[LayerStats | None], context: int,
                  training: bool = False) -> dict[str, float]:
    """Forward FLOPs per token by component, the experts as executed in the
    forward pass that gave ``layer_stats`` (aligned with ``model.ffn_layers()``,
    None for dense layers). ``training``: the stats come from a training-mode
    forward, and each router's :class:`TrainingOnlyCost` work is added."""
    breakdown = dict(model.base_flops_per_token(context))
    for layer, stats in zip(model.ffn_layers(), layer_stats):
        add_into(breakdown, layer.flops_per_token(stats))
        if training and stats is not None:
            for module in layer.modules():  # type: ignore[attr-defined]
                if isinstance(module, TrainingOnlyCost):
                    add_into(breakdown, module.training_only_flops_per_token(stats))
    return breakdown


def cost_metrics(model: CostedModel, layer_stats: Sequence[LayerStats | None], context: int) -> dict:
    """FLOPs per token by component, their total, and active/total parameters,
    of an evaluation forward (:func:`forward_flops`).

    Active parameters: all parameters minus those of the experts a token did
    not use, counted with the measured mean experts per token.
    """
    breakdown = forward_flops(model, layer_stats, context)
    total_params = param_count(model)  # type: ignore[arg-type]
    active = float(total_params)
    for layer, stats in zip(model.ffn_layers(), layer_stats):
        active += layer.active_params(stats) - param_count(layer)  # type: ignore[arg-type]
    return {
        "flops_per_token": sum(breakdown.values()),
        "flops_breakdown": breakdown,
        "active_params": active,
        "total_params": total_params,
    }


class TrainFlops:
    """Running mean of the forward FLOPs per token of the training steps, as
    executed (:func:`forward_flops` with ``training``); every step has the
    same number of tokens, so each counts the same."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.steps = 0

    def add(self, breakdown: dict[str, float]) -> None:
        add_into(self.total, breakdown)
        self.steps += 1

    def merge(self, other: TrainFlops) -> None:
        """Another process's steps (expert parallelism: each ran its own shard)."""
        add_into(self.total, other.total)
        self.steps += other.steps

    def summary(self) -> dict:
        """``train_flops_per_token`` and ``train_flops_breakdown``; None before any step."""
        if not self.steps:
            return {"train_flops_per_token": None, "train_flops_breakdown": None}
        mean = {key: value / self.steps for key, value in self.total.items()}
        return {"train_flops_per_token": sum(mean.values()), "train_flops_breakdown": mean}


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
