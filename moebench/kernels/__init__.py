"""Triton kernels for the MoE block: permutation, grouped GEMMs, combine."""

from moebench.kernels.autograd import expert_ffn_triton
from moebench.kernels.permute import Permutation, sort_by_expert

__all__ = ["Permutation", "expert_ffn_triton", "sort_by_expert"]
