"""Processes for expert parallelism: joining torchrun's group, each process's
shard of the batch, and gradients that make P processes train one model.

    torchrun --nproc_per_node=P -m moebench moe.expert_parallel=P ...

starts P processes with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT set; :func:`init_from_env` joins them over gloo on the CPU and
NCCL on CUDA. Every process builds the same model from the same seed, keeps
its share of the experts (moe/expert_parallel.py) and a replica of every other
parameter, draws the same global batch and keeps its shard of the examples
(:func:`batch_shard`): data parallelism for all but the experts.

Gradients. Each process's loss L_p is the mean over its own shard
(moebench/train.py), its shard routed as a group of its own. The same model
on one process routes each shard on its own too (P micro-batches), and its
loss is the mean of theirs, L = (1/P) sum_p L_p. For P processes to step as
that one process does, every gradient must be dL/dw:

- a replicated parameter w (attention, embeddings, routers): dL/dw = (1/P)
  sum_p dL_p/dw, each process's own gradient averaged over the processes by
  one all-reduce;
- an expert's parameter W, held by one process: every L_p depends on it
  through the all-to-all, whose backward brings each dL_p/dW to W's process,
  where autograd sums them: sum_p dL_p/dW = P dL/dW. So it is divided by P,
  not all-reduced: no other process holds W. (Megatron-LM reduces expert
  gradients over its expert-data-parallel group alone, here of size one.)

Not DDP: it would average the expert gradients too, which differ between
processes, and a plain all-reduce after the backward says what it does.
Gradients must be dense (PEER's sparse tables do not run sharded).
"""

from __future__ import annotations

import os
import socket
from dataclasses import fields
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moebench.moe.expert_parallel import ExpertParallelExperts
from moebench.tasks import Batch


def backend_for(device: torch.device) -> str:
    """gloo on the CPU, NCCL on CUDA (torch.distributed's advice for each)."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: torch.device) -> int:
    """Join the process group that torchrun describes in the environment, on
    ``device``'s backend (CUDA: this process's GPU is LOCAL_RANK); returns the
    number of processes, 1 without torchrun (nothing to join). A sweep's
    later runs find the group joined already."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 or dist.is_initialized():
        return world_size
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend_for(device))
    return world_size


def free_port() -> int:
    """A TCP port free on this machine now, for MASTER_PORT when no torchrun picks one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch_shard(batch: Batch, shard: int, shards: int) -> Batch:
    """Examples ``shard * B / shards`` up to ``(shard + 1) * B / shards`` of
    every field: one process's part of the global batch (B divisible by ``shards``)."""
    B = batch.inputs.shape[0]
    if B % shards:
        raise ValueError(f"a batch of {B} examples cannot be split into {shards} equal shards")
    part = {f.name: getattr(batch, f.name) for f in fields(batch)}
    return Batch(**{k: None if v is None else v.chunk(shards)[shard] for k, v in part.items()})


def rank() -> int:
    """This process's rank among the expert-parallel processes; 0 alone."""
    return dist.get_rank() if dist.is_initialized() else 0


def local_shards(batch: Batch, shards: int) -> list[Batch]:
    """The parts of a global batch this process trains on under
    ``moe.expert_parallel`` = ``shards``, each routed as a group of its own:
    its own shard when that many processes run, or every shard in turn on
    one process (micro-batches whose gradients add up: the same model)."""
    if shards == 1:
        return [batch]
    if dist.is_initialized():
        return [batch_shard(batch, rank(), shards)]
    return [batch_shard(batch, shard, shards) for shard in range(shards)]


def sum_over_ranks(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """``x`` added up over the processes (not differentiable); ``x`` itself alone."""
    if not dist.is_initialized():
        return x
    total = x.detach().clone()
    dist.all_reduce(total, group=group)
    return total


def mean_over_ranks(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """``x`` averaged over the processes (not differentiable); ``x`` itself alone."""
    if not dist.is_initialized():
        return x
    return sum_over_ranks(x, group) / dist.get_world_size(group)


def _split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(replicated parameters, this process's experts' parameters)."""
    expert = {id(p) for m in model.modules() if isinstance(m, ExpertParallelExperts)
              for p in m.parameters()}
    replicated, sharded = [], []
    for p in model.parameters():
        (sharded if id(p) in expert else replicated).append(p)
    return replicated, sharded


def _grads(model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """The model's gradients: (replicated parameters', expert parameters')."""
    return tuple([p.grad for p in params if p.grad is not None] for params in _split_parameters(model))


def total_params(model: nn.Module, group: dist.ProcessGroup | None = None) -> int:
    """The whole model's parameter count, every process's experts included."""
    replicated, sharded = _split_parameters(model)
    experts = gather_from_ranks(sum(p.numel() for p in sharded), group)
    return sum(p.numel() for p in replicated) + sum(experts)


def sync_gradients(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Turn each process's gradients of its own loss into those of the mean
    loss of all processes (the module docstring says why): replicated ones
    averaged over the processes, expert ones divided by their number."""
    P = dist.get_world_size(group)
    replicated, sharded = _grads(model)
    if replicated:  # one all-reduce for all, as DDP's buckets
        flat = torch.cat([g.reshape(-1) for g in replicated])
        dist.all_reduce(flat, group=group)
        for g, reduced in zip(replicated, flat.div_(P).split([g.numel() for g in replicated])):
            g.copy_(reduced.view_as(g))
    for g in sharded:
        g.div_(P)


def grad_norm(model: nn.Module, group: dist.ProcessGroup | None = None) -> Tensor:
    """The norm of the whole model's gradient, every process's experts
    included: what one process holding them all computes, the same on every
    process (so clipping, and skipping a step whose norm is not finite,
    agree everywhere). Call it after :func:`sync_gradients`."""
    replicated, sharded = _grads(model)
    device = next(model.parameters()).device

    def norm_sq(grads: list[Tensor]) -> Tensor:
        return nn.utils.get_total_norm(grads).square() if grads else torch.zeros((), device=device)

    sharded_sq = norm_sq(sharded)
    dist.all_reduce(sharded_sq, group=group)
    return (norm_sq(replicated) + sharded_sq).sqrt()


def gather_from_ranks(value: Any, group: dist.ProcessGroup | None = None) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order, on every process."""
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, value, group=group)
    return gathered
