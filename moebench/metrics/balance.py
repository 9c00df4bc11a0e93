"""Load-balance metrics of a per-expert load vector."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def balance_metrics(load_E: Tensor) -> dict[str, float]:
    """Coefficient of variation, max/mean, normalized entropy, share of dead experts.

    ``load_cv`` uses the population standard deviation, so a perfectly even
    load gives 0. ``load_entropy`` is H(load / sum) / log E: 1 for an even
    load, 0 when one expert takes everything.
    """
    load_E = load_E.double()
    E, total = load_E.numel(), load_E.sum()
    if total <= 0:
        return {"load_cv": math.nan, "load_max_over_mean": math.nan,
                "load_entropy": math.nan, "dead_experts": 1.0}
    mean = total / E
    p_E = load_E / total
    entropy = -(p_E * torch.log(p_E.clamp_min(1e-30))).sum() / math.log(E) if E > 1 else torch.tensor(1.0)
    return {
        "load_cv": float(load_E.std(unbiased=False) / mean),
        "load_max_over_mean": float(load_E.max() / mean),
        "load_entropy": float(entropy),
        "dead_experts": float((load_E == 0).double().mean()),
    }


def usage_metrics(load_E: Tensor) -> dict[str, float]:
    """Share of experts used at least once, and KL(usage || uniform) in nats.

    PEER's two measures of how a pool of experts is used (He 2024,
    arXiv:2407.04153, ablation "query batch normalization": "expert usage" and
    "unevenness"). KL = log E - H(usage): 0 for an even load, log E when one
    expert takes everything.
    """
    load_E = load_E.double()
    total = load_E.sum()
    if total <= 0:
        return {"expert_usage": 0.0, "usage_kl_uniform": math.nan}
    p_E = load_E / total
    kl = math.log(load_E.numel()) + float((p_E * torch.log(p_E.clamp_min(1e-30))).sum())
    return {"expert_usage": float((load_E > 0).double().mean()), "usage_kl_uniform": kl}
