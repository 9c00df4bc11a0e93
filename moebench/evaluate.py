"""Evaluation on fixed held-out batches: quality, routing metrics and cost.

Every evaluation draws its batches from the same seed (``EVAL_SEED``), so all
routers and all seeds are scored on exactly the same tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from moebench.config import RunConfig
from moebench.metrics.flops import cost_metrics
from moebench.metrics.routing import RoutingAccumulator
from moebench.routers.base import RouterContext
from moebench.tasks import Batch, Task

EVAL_SEED = 1234


def batch_context(batch: Batch, step: int) -> RouterContext:
    inputs = batch.inputs
    is_sequence = inputs.dim() == 2 and not inputs.is_floating_point()
    return RouterContext(
        step=step,
        token_ids_T=None if batch.token_ids is None else batch.token_ids.reshape(-1),
        cluster_ids_T=None if batch.cluster_ids is None else batch.cluster_ids.reshape(-1),
        batch_shape=tuple(inputs.shape) if is_sequence else None,
    )


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str, cfg: RunConfig, batch_size: int,
             batches: int | None = None, per_token: bool = True) -> dict:
    """Mean loss (nats per counted token), accuracy, the task's quality, routing
    metrics and forward cost over ``batches`` (default ``trainer.eval_batches``);
    and ``modal_experts`` (RoutingAccumulator.modal_experts), not for the
    record: train.py compares consecutive ones (``expert_agreement``).
    ``per_token=False`` leaves out what needs each token's route kept (the
    tokens each expert over-represents, ``modal_experts``) and the
    communication metrics: for a split whose loss alone is recorded."""
    batches = batches or cfg.trainer.eval_batches
    model.eval()
    device = next(model.parameters()).device
    # Routes drawn at random in evaluation (top-2's `random` second expert)
    # come from their own seeded stream: every evaluation draws the same, and
    # the training after a mid-run evaluation does not depend on eval_every.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(EVAL_SEED)
        comm_ranks = cfg.moe.comm_ranks if per_token else None
        routing = RoutingAccumulator(keep_tokens=per_token, comm_ranks=comm_ranks)
        return _evaluate(model, task, split, batch_size, batches, device, routing)


def _evaluate(model: nn.Module, task: Task, split: str, batch_size: int, batches: int,
              device: torch.device, routing: RoutingAccumulator) -> dict:
    generator = torch.Generator().manual_seed(EVAL_SEED)
    loss_sum, correct, counted = 0.0, 0.0, 0.0
    costs: dict[str, float] = {}
    for _ in range(batches):
        batch = task.get_batch(split, batch_size, generator).to(device)
        ctx = batch_context(batch, step=-1)
        out = model(batch.inputs, ctx)
        losses_T = task.token_losses(out, batch)
        mask_T = batch.counted_T().to(losses_T.dtype)
        hits_T = task.predictions(out, batch) == batch.targets.reshape(-1)
        loss_sum += float(losses_T.sum())
        correct += float((hits_T * mask_T).sum())
        counted += float(mask_T.sum())
        routing.add(out.moe_stats, ctx)
        batch_cost = cost_metrics(model, out.layer_stats, context=task.tokens_per_example)
        for key in ("flops_per_token", "active_params", "total_params"):
            costs[key] = costs.get(key, 0.0) + batch_cost[key] / batches
        breakdown = costs.setdefault("flops_breakdown", {})
        for key, value in batch_cost["flops_breakdown"].items():
            breakdown[key] = breakdown.get(key, 0.0) + value / batches
    loss, accuracy = loss_sum / counted, correct / counted
    return {"loss": loss, "accuracy": accuracy, "quality": task.quality(loss, accuracy),
            **routing.summary(), **costs, "modal_experts": routing.modal_experts()}
