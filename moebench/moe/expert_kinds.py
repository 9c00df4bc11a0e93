"""What an expert is (``moe.experts``): each kind's module, built from the config.

Every kind takes :class:`~moebench.moe.experts.Experts`' forward signature,
rows grouped by expert in and a weighted sum per token out, and reports its
own cost (``flops(rows_E)``, ``params_per_token(uses_E)``), so the MoE block
and any router drive them unchanged.
"""

from __future__ import annotations

from torch import nn

from moebench.config import ModelConfig, MoEConfig
from moebench.moe.experts import Experts
from moebench.moe.heterogeneous_experts import HeterogeneousExperts
from moebench.moe.lora_experts import LoRAExperts

EXPERT_KINDS = ("standard", "lora", "heterogeneous")  # moe.experts


def build_experts(model_cfg: ModelConfig, moe_cfg: MoEConfig) -> nn.Module:
    """The experts of an MoE block, as ``moe.experts`` names them: E
    independent FFNs of width d_ff (moe/experts.py), LoRA experts of rank
    ``moe.lora_rank`` (moe/lora_experts.py), or FFNs of the widths
    ``moe.expert_widths`` (moe/heterogeneous_experts.py)."""
    m, E = model_cfg, moe_cfg.num_experts
    if moe_cfg.experts == "lora":
        return LoRAExperts(E, m.d_model, m.d_ff, m.activation, moe_cfg.lora_rank)
    if moe_cfg.experts == "heterogeneous":
        return HeterogeneousExperts(m.d_model, list(moe_cfg.expert_widths), m.activation)
    return Experts(E, m.d_model, m.d_ff, m.activation, moe_cfg.impl)
