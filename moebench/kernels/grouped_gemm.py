"""Grouped GEMMs over rows sorted by expert, with gathers fused into the loads.

Two Triton kernels serve every matmul of the expert FFN, forward and backward:

* :func:`grouped_mm` -- ``C[rows of e] = A[rows of e] @ W[e]`` for each expert
  e. Row r of A may be gathered (``a_idx``: token rows read straight from
  ``x_TD``, never copied), the product scaled per row (``scale``: the combine
  weight, in the epilogue) and written to a permuted row (``c_idx``: token
  order). The "scatter2scatter" kernel of ScatterMoE (Tan et al. 2024,
  arXiv:2403.08245) does the same to avoid materialising grouped copies.
* :func:`grouped_wgrad` -- ``dW[e] = A_e^T @ B_e``, each tile of ``dW[e]``
  owned by one program that walks the expert's rows in order: deterministic,
  no atomics.

Work is split into tiles of ``BLOCK_M`` rows that never straddle two experts
(the block-sparse layout of MegaBlocks, Gale et al. 2022, arXiv:2211.15841).
Their number depends on the data, so the grid is sized by a bound known on
the host, ``cdiv(R, BLOCK_M) + E`` (each expert leaves at most one partial
tile), and spare tiles exit at once: no host sync.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

# The interpreter runs each program in numpy: small blocks keep tests quick and
# give even small test shapes several tiles per expert; one config, since
# autotuning would only multiply its runtime.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_M = 16 if INTERPRET else 128  # rows per tile; 128 as in ScatterMoE


def _configs(
    gpu: list[tuple[int, int, int, int]], interpret: tuple[int, int]
) -> list[triton.Config]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) on a GPU, one small config interpreted."""
    if INTERPRET:
        return [triton.Config({"BLOCK_N": interpret[0], "BLOCK_K": interpret[1]})]
    return [
        triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s) for n, k, w, s in gpu
    ]


def _precision(a: Tensor) -> str:
    """fp32 dots follow torch's own setting (full precision unless TF32 is allowed)."""
    if a.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


@triton.jit
def _rows(idx_ptr, rows, mask):
    """The rows to read or write: ``idx[rows]`` when an index is given, else ``rows``."""
    if idx_ptr is not None:
        rows = tl.load(idx_ptr + rows, mask=mask, other=0)
    return rows.to(tl.int64)


class TileSchedule(NamedTuple):
    """Tile i covers rows ``row_start[i]:row_end[i]`` of expert ``expert[i]``; spare ones none."""

    expert: Tensor
    row_start: Tensor
    row_end: Tensor


def tile_schedule(counts_E: Tensor, num_rows: int) -> TileSchedule:
    """Cut each expert's rows into tiles of ``BLOCK_M``, on the device."""
    num_experts = counts_E.numel()
    tiles_E = (counts_E + BLOCK_M - 1) // BLOCK_M
    tile_end_E = tiles_E.cumsum(0)
    row_end_E = counts_E.cumsum(0)
    tile = torch.arange(triton.cdiv(num_rows, BLOCK_M) + num_experts, device=counts_E.device)
    # Spare tiles land on the last expert past its end, so they come out empty.
    expert = torch.searchsorted(tile_end_E, tile, right=True).clamp(max=num_experts - 1)
    first_tile = tile_end_E[expert] - tiles_E[expert]
    row_start = row_end_E[expert] - counts_E[expert] + (tile - first_tile) * BLOCK_M
    return TileSchedule(expert, row_start, row_end_E[expert])


@triton.autotune(
    configs=_configs([(128, 64, 8, 3), (256, 64, 8, 3), (128, 32, 4, 4), (64, 64, 4, 4)], (32, 32)),
    key=["N", "K"],
)
@triton.jit
def _grouped_mm_kernel(
    a_ptr,
    a_idx_ptr,
    w_ptr,
    c_ptr,
    c_idx_ptr,
    scale_ptr,
    tile_expert_ptr,
    tile_start_ptr,
    tile_end_ptr,
    N,
    K,
    stride_am,
    stride_ak,
    stride_we,
    stride_wk,
    stride_wn,
    stride_cm,
    stride_cn,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(0)
    start = tl.load(tile_start_ptr + tile)
    end = tl.load(tile_end_ptr + tile)
    if start >= end:
        return
    expert = tl.load(tile_expert_ptr + tile).to(tl.int64)
    rows = start + tl.arange(0, BLOCK_M)
    row_ok = rows < end
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + _rows(a_idx_ptr, rows, row_ok)[:, None] * stride_am + ks[None, :] * stride_ak
    w_ptrs = w_ptr + expert * stride_we + ks[:, None] * stride_wk + cols[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = ks < K - k0
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk
    if scale_ptr is not None:
        acc *= tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    c_ptrs = c_ptr + _rows(c_idx_ptr, rows, row_ok)[:, None] * stride_cm + cols[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def grouped_mm(
    a: Tensor,
    w: Tensor,
    tiles: TileSchedule,
    a_idx_R: Tensor | None = None,
    c_idx_R: Tensor | None = None,
    scale_R: Tensor | None = None,
) -> Tensor:
    """``c[c_idx[r]] = scale[r] * a[a_idx[r]] @ w[e(r)]`` for the rows the tiles cover.

    ``a`` is [rows or tokens, K], ``w`` [E, K, N] (any strides: a transposed
    view costs nothing), ``c`` [R, N]. Each index defaults to the identity.
    Rows no tile covers (dropped assignments) are left unwritten.
    """
    num_rows = a.shape[0] if a_idx_R is None else a_idx_R.numel()
    _, K, N = w.shape
    c = torch.empty(num_rows, N, device=a.device, dtype=a.dtype)

    def grid(meta: dict) -> tuple[int, int]:
        return tiles.expert.numel(), triton.cdiv(N, meta["BLOCK_N"])

    _grouped_mm_kernel[grid](
        a,
        a_idx_R,
        w,
        c,
        c_idx_R,
        scale_R,
        *tiles,
        N,
        K,
        a.stride(0),
        a.stride(1),
        *w.stride(),
        c.stride(0),
        c.stride(1),
        PRECISION=_precision(a),
        BLOCK_M=BLOCK_M,
    )
    return c


@triton.autotune(
    configs=_configs([(128, 32, 8, 3), (128, 64, 8, 3), (64, 64, 4, 4)], (32, 16)),
    key=["M", "N"],
)
@triton.jit
def _grouped_wgrad_kernel(
    a_ptr,
    a_idx_ptr,
    b_ptr,
    b_idx_ptr,
    scale_ptr,
    c_ptr,
    bounds_ptr,
    M,
    N,
    stride_ar,
    stride_am,
    stride_br,
    stride_bn,
    stride_ce,
    stride_cm,
    stride_cn,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    expert = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    ms = (tl.program_id(1) // num_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    ns = (tl.program_id(1) % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = ms < M
    n_ok = ns < N
    start = tl.load(bounds_ptr + expert)
    end = tl.load(bounds_ptr + expert + 1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # An expert with no rows skips the loop and writes zeros, as it must.
    for r0 in range(start, end, BLOCK_K):
        rows = r0 + tl.arange(0, BLOCK_K)
        row_ok = rows < end
        a_rows = _rows(a_idx_ptr, rows, row_ok)
        b_rows = _rows(b_idx_ptr, rows, row_ok)
        a_t = tl.load(
            a_ptr + a_rows[None, :] * stride_ar + ms[:, None] * stride_am,
            mask=m_ok[:, None] & row_ok[None, :],
            other=0.0,
        )
        b = tl.load(
            b_ptr + b_rows[:, None] * stride_br + ns[None, :] * stride_bn,
            mask=row_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        if scale_ptr is not None:
            s = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
            b = (b.to(tl.float32) * s[:, None]).to(b.dtype)
        acc = tl.dot(a_t, b, acc, input_precision=PRECISION)
    c_ptrs = c_ptr + expert * stride_ce + ms[:, None] * stride_cm + ns[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def grouped_wgrad(
    a: Tensor,
    b: Tensor,
    counts_E: Tensor,
    a_idx_R: Tensor | None = None,
    b_idx_R: Tensor | None = None,
    b_scale_R: Tensor | None = None,
) -> Tensor:
    """``dW[e] = sum over rows r of expert e of a[a_idx[r]]^T (b_scale[r] * b[b_idx[r]])``.

    ``a`` is [rows or tokens, M], ``b`` [rows or tokens, N], ``dW`` [E, M, N].
    """
    M, N = a.shape[1], b.shape[1]
    num_experts = counts_E.numel()
    bounds_E1 = torch.nn.functional.pad(counts_E.cumsum(0), (1, 0))  # e's rows: [e] to [e + 1]
    c = torch.empty(num_experts, M, N, device=a.device, dtype=a.dtype)

    def grid(meta: dict) -> tuple[int, int]:
        return num_experts, triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])

    _grouped_wgrad_kernel[grid](
        a,
        a_idx_R,
        b,
        b_idx_R,
        b_scale_R,
        c,
        bounds_E1,
        M,
        N,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        *c.stride(),
        PRECISION=_precision(a),
        BLOCK_M=BLOCK_M,
    )
    return c
