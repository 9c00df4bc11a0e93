"""Combine: sum each token's expert outputs, deterministically.

The second GEMM's epilogue writes row r of the expert output to slot
``slot_R[r]`` of a buffer in token order, so a token's rows are contiguous;
one program per token then adds them in a fixed order. The same result as a
scatter-add but without atomics, whose order (and so whose rounding) changes
from run to run. Tokens with no rows get zeros.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor


class TokenOrder(NamedTuple):
    """Row r goes to slot ``slot_R[r]``; token t owns slots ``bounds_T1[t]:bounds_T1[t+1]``."""

    slot_R: Tensor
    bounds_T1: Tensor


def token_order(token_idx_R: Tensor, kept_R: Tensor, num_tokens: int) -> TokenOrder:
    """Stable sort of the kept rows by token, on the device (no host sync)."""
    # Rows that were not kept sort behind every token, outside all segments.
    key_R = torch.where(kept_R, token_idx_R, num_tokens)
    sorted_key_R, by_token_R = torch.sort(key_R, stable=True)
    slots = torch.arange(key_R.numel(), device=key_R.device)
    slot_R = torch.empty_like(by_token_R).scatter_(0, by_token_R, slots)
    tokens = torch.arange(num_tokens + 1, device=key_R.device)
    return TokenOrder(slot_R, torch.searchsorted(sorted_key_R, tokens))


@triton.jit
def _segment_sum_kernel(src_ptr, bounds_ptr, out_ptr, D, stride_s, stride_o, BLOCK_D: tl.constexpr):
    token = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    start = tl.load(bounds_ptr + token)
    end = tl.load(bounds_ptr + token + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for slot in range(start, end):
        acc += tl.load(src_ptr + slot * stride_s + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(
        out_ptr + token.to(tl.int64) * stride_o + cols,
        acc.to(out_ptr.dtype.element_ty),
        mask=col_ok,
    )


def segment_sum(src_RD: Tensor, order: TokenOrder) -> Tensor:
    """``out[t] = sum of src rows in token t's slots``, in slot order."""
    num_tokens, D = order.bounds_T1.numel() - 1, src_RD.shape[1]
    out_TD = torch.empty(num_tokens, D, device=src_RD.device, dtype=src_RD.dtype)
    block_d = min(triton.next_power_of_2(D), 1024)
    grid = (num_tokens, triton.cdiv(D, block_d))
    _segment_sum_kernel[grid](
        src_RD, order.bounds_T1, out_TD, D, src_RD.stride(0), out_TD.stride(0), BLOCK_D=block_d
    )
    return out_TD
