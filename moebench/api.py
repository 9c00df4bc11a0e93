"""The Python API: a router's MoE layer for one's own model in one call, one
run from Python, and run records as pandas frames (README, "Python API").

Everything goes through the command line's own machinery: a layer's
arguments become overrides of ``python -m moebench``, so its defaults are the
router's YAML (conf/router/) and a bad value fails with the command line's
one-line error; the router's ``build_layer`` makes the layer the benchmark
trains.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from moebench.compose import explain, load_config
from moebench.config import MoEConfig, RunConfig
from moebench.errors import ConfigError
from moebench.moe.block import LayerStats
from moebench.results import Results, load_results, read_record
from moebench.routers import ROUTERS
from moebench.routers.base import DataStats, RouterContext
from moebench.run import run

__all__ = ["MoE", "MoEOutput", "Results", "load_results", "run_one"]


class MoEOutput(NamedTuple):
    """What :class:`MoE` returns: ``y, aux_loss, stats = moe(x)``."""

    y: Tensor  # the layer's output, shaped as its input
    aux_loss: Tensor  # float32 scalar: the router's auxiliary losses summed (0 without any)
    stats: LayerStats | None  # what the layer did (loads, drops, each loss); None for a dense FFN


class MoE(nn.Module):
    """A router and its MoE layer for one's own model: ``MoE(dim=512, num_experts=8, router="top2")``.

    ``y, aux_loss, stats = moe(x)`` for ``x`` of shape ``[..., dim]``; add
    ``aux_loss`` to the model's loss, as the benchmark's training does.

    Every argument is a key of ``python -m moebench``, unset ones take its
    defaults, and a bad one raises ValueError (ConfigError where moebench
    checks it) in one line naming the key, the value and the allowed values:
    ``dim`` is model.d_model, ``hidden`` model.d_ff (default 4 * dim: a
    transformer's FFN width; the command line's presets fix it instead),
    ``activation`` model.activation. ``num_experts`` and every other option
    is the router's own key where it has one (``router.*``: top2's
    ``second_policy``, expert_choice's and soft's ``capacity_factor``, PEER's
    ``num_experts``), else the MoE block's (``moe.*``: ``capacity_factor``,
    ``eval_capacity_factor``, ``dropless``, ``drop_policy``, ``impl``,
    ``routing_groups``).

    ``causal=True``, for a layer in a causal model: a router or capacity that
    would let a position see later ones routes each position on its own
    (``moe.routing_groups=auto``, as the benchmark's causal tasks), so ``x``
    must be ``[batch, seq, dim]``. Hash routing maps token ids: give
    ``vocab_size`` (and ``token_counts``, per id, for ``balanced=True``) and
    call ``moe(x, token_ids=ids)``. RL-R learns from the model's per-token
    loss: add the losses ``stats.on_token_loss(loss_T, counted_T)`` returns.
    PEER's tables get sparse gradients, which torch's Adam refuses:
    ``moebench.train.make_optimizer`` gives them lazy Adam, as the benchmark
    does. The oracle router routes by the synthetic task's clusters: runs only.
    """

    def __init__(self, dim: int, num_experts: int | None = None, router: str = "top1",
                 hidden: int | None = None, *, activation: str | None = None, causal: bool = False,
                 vocab_size: int | None = None, token_counts: Tensor | None = None,
                 **options: object) -> None:
        super().__init__()
        # auto routes as "all" unless the forward says the model is causal (moe/grouping.py).
        options = {"routing_groups": "auto", **options}
        if num_experts is not None:
            options["num_experts"] = num_experts
        # One head: the layer has no attention, and the check that heads divide dim must pass.
        model = {"d_model": dim, "d_ff": 4 * dim if hidden is None else hidden, "n_heads": 1}
        if activation is not None:
            model["activation"] = activation
        cfg = config_of(f"router={router}", *key_overrides("model", model),
                        *option_overrides(router, options))
        self.causal = causal
        self.layer = ROUTERS.get(router).cls.build_layer(cfg.router, cfg.model, cfg.moe,
                                                          DataStats(vocab_size, token_counts))

    def forward(self, x: Tensor, token_ids: Tensor | None = None, step: int = 0) -> MoEOutput:
        """``x``: ``[..., dim]``; three or more dimensions are sequences
        ``[..., seq, dim]`` (Soft MoE's groups, routing by position).
        ``token_ids``: ``x``'s token ids, shaped as ``x`` without its last
        dimension (hash routing). ``step``: the training step, for state a
        router moves once per step (RL-R's reward baseline)."""
        if self.causal and x.dim() < 3:
            raise ValueError(f"x of shape {tuple(x.shape)}: a causal MoE needs [batch, seq, dim] "
                             "to route each position on its own")
        ctx = RouterContext(
            step=step,
            token_ids_T=None if token_ids is None else token_ids.reshape(-1),
            batch_shape=(x.shape[:-2].numel(), x.shape[-2]) if x.dim() >= 3 else None,
            causal=self.causal,
        )
        y, stats = self.layer(x, ctx)
        losses = [] if stats is None else list(stats.aux_losses.values())
        return MoEOutput(y, sum(losses, torch.zeros((), device=x.device)), stats)


def run_one(*overrides: str, results_dir: str | Path | None = None) -> dict:
    """One run, as ``python -m moebench <overrides>`` runs it: train, evaluate,
    write the run record under ``results_dir`` (default: the command line's,
    results/runs) and return the record, a dict (``record["metrics"]["quality"]``).
    A run whose completed record is there already is not repeated: its record is returned.

    Not named ``train``: ``moebench.train`` is the training loop's module."""
    if results_dir is not None:
        overrides = (*overrides, f"results_dir={override_value(str(results_dir))}")
    return read_record(run(config_of(*overrides)))


def config_of(*overrides: str) -> RunConfig:
    """:func:`moebench.compose.load_config`, with Hydra's errors in the command line's one line."""
    try:
        return load_config(*overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ValueError(explain(e)) from None


def option_overrides(router: str, options: dict[str, object]) -> list[str]:
    """Overrides for ``options``: the router's own key where it has one, else the MoE block's."""
    router_keys = [f.name for f in dataclasses.fields(ROUTERS.get(router).config_cls) if f.name != "name"]
    moe_keys = [f.name for f in dataclasses.fields(MoEConfig)]
    for key, value in options.items():
        if key not in router_keys and key not in moe_keys:
            raise ConfigError(key, value, f"an option of router {router} ({', '.join(router_keys)}) "
                                          f"or of the MoE block ({', '.join(moe_keys)})")
    return [*key_overrides("router", {k: v for k, v in options.items() if k in router_keys}),
            *key_overrides("moe", {k: v for k, v in options.items() if k not in router_keys})]


def key_overrides(node: str, values: dict[str, object]) -> list[str]:
    """``node.key=value`` for each of ``values``."""
    return [f"{node}.{key}={override_value(value)}" for key, value in values.items()]


def override_value(value: object) -> str:
    """A Python value as the command line writes it: ``1e-05``, ``true``, ``null``, ``"all"``."""
    return repr(value) if isinstance(value, float) else json.dumps(value)
