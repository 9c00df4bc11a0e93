"""Expert parallelism: experts sharded over processes, their rows exchanged by all-to-all.

Each of the P processes of the group holds E / P of a block's experts,
contiguously (process p: experts p E/P to (p + 1) E/P - 1, the placement
moebench/metrics/communication.py simulates), a replica of every other
parameter, and its own shard of the batch (moebench/distributed.py). It
routes, applies capacity and counts drops for its own tokens with the
block's own code, unchanged (moe/block.py): its shard is a routing group, as
each device's tokens are in GShard (Lepikhin et al. 2020, section 3). Then
:class:`ExpertParallelExperts`, in the place of
:class:`~moebench.moe.experts.Experts` and with its signature, runs the
experts on the dispatched rows:

1. split sizes: every process tells every other how many rows it sends each
   of that process's experts (an all-to-all of E counts), so that each
   knows how many it receives;
2. dispatch: the rows, already grouped by expert and so by destination, go
   out in one ``all_to_all_single`` with uneven splits;
3. experts: the received rows, grouped by source process, are regrouped by
   local expert and run through the same grouped forward as on one process
   (:func:`~moebench.moe.experts.expert_ffn`, PyTorch or Triton);
4. combine: the results go back by the reverse all-to-all, and the home
   process weights them and adds them up in token order.

Megatron-LM's ``MoEAlltoAllTokenDispatcher`` takes the same steps
(megatron/core/transformer/moe/token_dispatcher.py: input splits from
``num_local_tokens_per_expert.reshape(ep_size, num_local_experts)``, then
``sort_chunks_by_idxs`` from source-major to expert-major); the autograd
all-to-all is DeepSpeed-MoE's and fairseq's ``_AllToAll``
(deepspeed/moe/sharded_moe.py), with uneven splits. A Soft MoE's slots are
rows like any other: a group's slots for expert e are mixed where its tokens
live and travel to e's process.
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts, expert_ffn


class ExchangeMeter:
    """Bytes this process sent to the others through the all-to-alls, and the
    seconds it spent in them, split sizes and backward included, summed as
    executed until read (as routers/base.py's TrainingWork). The seconds
    include waiting for the slowest process to reach the exchange: under
    uneven loads that wait is the imbalance's cost."""

    def __init__(self) -> None:
        self.bytes_sent, self.seconds = 0, 0.0

    def add(self, bytes_sent: int, seconds: float) -> None:
        self.bytes_sent += bytes_sent
        self.seconds += seconds

    def take(self) -> dict[str, float]:
        """The figures since the last read; then starts again."""
        taken = {"a2a_bytes_sent": float(self.bytes_sent), "a2a_seconds": self.seconds}
        self.bytes_sent, self.seconds = 0, 0.0
        return taken


def _wait(device: torch.device) -> None:
    if device.type == "cuda":  # NCCL runs on a stream: time what it did, not its launch
        torch.cuda.synchronize(device)


def all_to_all(
    x_RD: Tensor,
    send_splits: list[int],
    recv_splits: list[int],
    group: dist.ProcessGroup | None = None,
    meter: ExchangeMeter | None = None,
) -> Tensor:
    """``all_to_all_single`` along rows: ``send_splits[q]`` rows of ``x_RD`` go
    to process q, in order; ``recv_splits[q]`` rows come from q. Not differentiable."""
    out_RD = x_RD.new_empty((sum(recv_splits), *x_RD.shape[1:]))
    if meter is not None:
        _wait(x_RD.device)
    start = time.perf_counter()
    dist.all_to_all_single(out_RD, x_RD.contiguous(), recv_splits, send_splits, group=group)
    if meter is not None:
        _wait(x_RD.device)
        sent_rows = sum(send_splits) - send_splits[dist.get_rank(group)]  # its own stay home
        row_bytes = math.prod(x_RD.shape[1:]) * x_RD.element_size()
        meter.add(sent_rows * row_bytes, time.perf_counter() - start)
    return out_RD


class _AllToAll(torch.autograd.Function):
    """:func:`all_to_all` whose backward is the reverse exchange of the gradient."""

    @staticmethod
    def forward(ctx, x_RD: Tensor, send_splits: list[int], recv_splits: list[int],
                group: dist.ProcessGroup | None, meter: ExchangeMeter | None) -> Tensor:
        ctx.splits, ctx.group, ctx.meter = (send_splits, recv_splits), group, meter
        return all_to_all(x_RD, send_splits, recv_splits, group, meter)

    @staticmethod
    def backward(ctx, grad_RD: Tensor) -> tuple[Tensor | None, ...]:
        send_splits, recv_splits = ctx.splits
        return all_to_all(grad_RD, recv_splits, send_splits, ctx.group, ctx.meter), None, None, None, None


def exchange_rows(
    x_RD: Tensor,
    send_splits: list[int],
    recv_splits: list[int],
    group: dist.ProcessGroup | None = None,
    meter: ExchangeMeter | None = None,
) -> Tensor:
    """:func:`all_to_all`, differentiable: gradients flow back through the
    reverse exchange, so every process must run its backward too."""
    return _AllToAll.apply(x_RD, send_splits, recv_splits, group, meter)


def by_local_expert(received_PL: Tensor) -> Tensor:
    """The received rows' order grouped by local expert: rows arrive as chunks
    (source q, local expert l) of ``received_PL[q, l]`` rows, source-major;
    within an expert the sources stay in order (Megatron-LM's ``sort_chunks_by_idxs``)."""
    P, L = received_PL.shape
    local_expert_R = torch.arange(L, device=received_PL.device).repeat(P)
    return torch.argsort(local_expert_R.repeat_interleave(received_PL.flatten()), stable=True)


class ExpertParallelExperts(nn.Module):
    """This process's E / P experts behind :class:`Experts`' signature: given
    every dispatched row of this process's tokens, grouped by (global) expert,
    it returns their weighted sum per token, the rows for other processes'
    experts computed there."""

    def __init__(self, experts: Experts, group: dist.ProcessGroup | None = None,
                 meter: ExchangeMeter | None = None) -> None:
        super().__init__()
        P, rank, E = dist.get_world_size(group), dist.get_rank(group), experts.num_experts
        if E % P:
            raise ValueError(f"{E} experts cannot be sharded evenly over {P} processes")
        L = E // P
        self.activation, self.impl = experts.activation, experts.impl
        self.group, self.meter, self.world_size, self.total_experts = group, meter, P, E
        # The same names as Experts': a process's state dict holds its shard.
        self.w_in_EDH = nn.Parameter(experts.w_in_EDH.detach()[rank * L:(rank + 1) * L].clone())
        self.w_out_EFD = nn.Parameter(experts.w_out_EFD.detach()[rank * L:(rank + 1) * L].clone())

    @property
    def num_experts(self) -> int:
        """All E experts of the block, as routing and dispatch see them."""
        return self.total_experts

    # Costed as Experts are: the shard's weights carry the same names.
    flops = Experts.flops
    params_per_token = Experts.params_per_token

    def forward(self, x_TD: Tensor, token_idx_R: Tensor, counts_E: Tensor, weight_R: Tensor) -> Tensor:
        P, L = self.world_size, self.w_in_EDH.shape[0]
        counts_PL = counts_E.view(P, L)
        # Rows past the kept ones belong to no expert (moe/experts.py).
        kept = int(counts_E.sum())
        token_idx_R, weight_R = token_idx_R[:kept], weight_R[:kept]
        received_PL = all_to_all(counts_PL, [1] * P, [1] * P, self.group, self.meter)
        send, recv = counts_PL.sum(1).tolist(), received_PL.sum(1).tolist()
        rows_RD = exchange_rows(x_TD[token_idx_R], send, recv, self.group, self.meter)
        # The grouped forward gathers rows by the index it is given and adds
        # each result back at that index: a permutation as the index runs the
        # experts on rows grouped by expert and returns them in arrival order.
        out_RD = expert_ffn(rows_RD, self.w_in_EDH, self.w_out_EFD, by_local_expert(received_PL),
                            received_PL.sum(0), rows_RD.new_ones(rows_RD.shape[0]),
                            self.activation, self.impl)
        back_RD = exchange_rows(out_RD, recv, send, self.group, self.meter)
        y_TD = torch.zeros_like(x_TD)
        return y_TD.index_add(0, token_idx_R, back_RD * weight_R.to(back_RD.dtype)[:, None])

    def extra_repr(self) -> str:
        return f"{self.w_in_EDH.shape[0]} of {self.total_experts} experts"


def shard_experts(model: nn.Module, group: dist.ProcessGroup | None = None,
                  meter: ExchangeMeter | None = None) -> int:
    """Keep this process's share of every MoE block's experts (the rest are
    freed); returns the number of blocks sharded. Every process must have
    built ``model`` alike (the same seed), and calls this before making its
    optimizer."""
    blocks = [m for m in model.modules() if isinstance(m, MoEBlock)]
    for block in blocks:
        block.experts = ExpertParallelExperts(block.experts, group, meter)
    return len(blocks)
