"""Triton kernels for the MoE block: grouped GEMMs and the combine.

The sync-free permutation they consume is :func:`moebench.moe.dispatch.sort_by_expert`.
"""

from moebench.kernels.autograd import expert_ffn_triton

__all__ = ["expert_ffn_triton"]
