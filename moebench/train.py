"""The training loop: plain and readable top to bottom.

One function, :func:`train`, builds the model for a task, trains it for the
configured steps, evaluates along the way and at the end, and returns what a
run record needs. Ctrl-C or SIGTERM (see moebench/interrupt.py) ends it early
with status "interrupted" and keeps everything measured so far.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moebench.config import RunConfig, TrainerConfig
from moebench.distributed import (gather_from_ranks, grad_norm, local_shards, mean_over_ranks, rank,
                                  sum_over_ranks, sync_gradients, total_params)
from moebench.errors import ConfigError
from moebench.evaluate import batch_context, evaluate
from moebench.interrupt import held_signals, signal_name
from moebench.metrics.causality import task_causal_leak
from moebench.metrics.expert_tokens import mean_agreement
from moebench.metrics.flops import TrainFlops, cost_metrics, forward_flops, param_count
from moebench.metrics.loss_curve import LossCurve
from moebench.metrics.routing import RoutingAccumulator
from moebench.models.ffn import FFNFactory
from moebench.moe.block import LayerStats, MoEBlock
from moebench.moe.expert_parallel import ExchangeMeter, shard_experts
from moebench.optim import LazyAdam, Optimizers
from moebench.routers.base import Router, RouterConfig
from moebench.schedule import Horizon, evaluations_due, learning_rate, steps_for_budget
from moebench.tasks import Batch, Task
from moebench.tracking.base import NoTracker, Tracker
from moebench.tracking.progress import MAIN_PHASE, Progress

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    status: str  # completed | diverged | interrupted
    metrics: dict
    curves: list[dict]
    model: nn.Module
    interrupted_by: str | None = None  # SIGINT | SIGTERM when status is interrupted
    train_loss_curve: list[dict] = field(default_factory=list)  # metrics/loss_curve.py


def load_matching(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Copy every tensor whose name and shape match; return the names copied.

    Between tasks with different vocabularies this transfers the transformer
    body (attention, FFNs, routers, norms) and re-initializes embeddings and head.
    """
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    return sorted(matching)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_threads(num_threads: int | None) -> int:
    """``trainer.num_threads``, or by default half the cores this process may
    use (at least 1). Measured on 2 shared cores (README, "CPU threads"):
    torch's default of every core gains 7% (tiny) to 40% (small) on an idle
    machine but runs 2-3x slower than one thread once another process keeps
    a core busy; half the cores keeps the run's speed when others share the
    machine."""
    if num_threads is not None:
        return num_threads
    return max(1, len(os.sched_getaffinity(0)) // 2)


def make_optimizer(model: nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer | Optimizers:
    """AdamW; weight decay on matrices only, not on norms, biases or gains (as
    nanoGPT). Tables with sparse gradients, which a layer lists in its
    ``sparse_parameters()`` (PEER's experts), get lazy Adam without decay
    (moebench/optim.py): it touches only the rows a step retrieved."""
    sparse = [p for m in model.modules() if hasattr(m, "sparse_parameters") for p in m.sparse_parameters()]
    dense = [p for p in model.parameters() if all(p is not q for q in sparse)]
    groups = [{"params": [p for p in dense if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in dense if p.dim() < 2], "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    return Optimizers(adamw, LazyAdam(sparse, lr=cfg.lr, betas=(0.9, 0.95))) if sparse else adamw


def step_loss(model: nn.Module, task: Task, batch: Batch,
              step: int) -> tuple[Tensor, Tensor, dict, list[LayerStats | None]]:
    """Forward one batch: (total loss, task loss, aux losses by name, the FFN
    layers' stats, None for dense layers)."""
    out = model(batch.inputs, batch_context(batch, step))
    token_losses_T = task.token_losses(out, batch)
    counted_T = batch.counted_T()
    task_loss = token_losses_T.sum() / counted_T.sum()
    aux: dict[str, Tensor] = {}
    for layer, stats in enumerate(out.moe_stats):
        named = dict(stats.aux_losses)
        if stats.on_token_loss is not None:  # e.g. REINFORCE: reward = -token loss
            named.update(stats.on_token_loss(token_losses_T.detach(), counted_T))
        for name, value in named.items():
            aux[f"{name}/{layer}"] = value
    total = task_loss + sum(aux.values(), torch.zeros((), device=task_loss.device))
    return total, task_loss, aux, out.layer_stats


def train_flops_spent(train_flops: TrainFlops, tokens: int) -> float | None:
    """Training FLOPs spent on ``tokens``, counted as ``trainer.max_train_flops``
    counts them (3x the forward FLOPs, moebench.schedule.budget_steps), the forward as
    executed by the steps taken so far (``train_flops_per_token``); None
    before the first step."""
    per_token = train_flops.summary()["train_flops_per_token"]
    return None if per_token is None else 3 * per_token * tokens


def curve_point(step: int, train_loss: float | None, evaluation: dict, train_tokens: int,
                train_flops: float | None, previous_modal: tuple[Tensor, Tensor] | None = None) -> dict:
    """One evaluation of the curves, with how much training preceded it; and,
    where tokens have ids, ``expert_agreement``: the share of its tokens whose
    id kept its modal expert since ``previous_modal``, the previous
    evaluation's ``modal_experts`` (None at the first)."""
    keys = ("loss", "quality", "drop_rate", "load_cv", "routing_entropy", "diagnostics")
    point = {"step": step, "train_loss": train_loss, "train_tokens": train_tokens,
             "train_flops": train_flops}
    point.update({("val_loss" if k == "loss" else k): evaluation[k] for k in keys if k in evaluation})
    if evaluation.get("modal_experts") is not None:
        modal_LV, counts_V = evaluation["modal_experts"]
        point["expert_agreement"] = (None if previous_modal is None
                                     else mean_agreement(previous_modal[0], modal_LV, counts_V))
    return point


def clip_grad_norm(model: nn.Module, max_norm: float, total: Tensor | None = None) -> None:
    """``nn.utils.clip_grad_norm_``, sparse gradients (PEER's tables) included:
    torch's norm kernels reject sparse tensors, so each enters the total by
    its own norm, and it is scaled through its values, which keeps it coalesced.
    ``total``: the norm, when this process holds only part of the model
    (expert parallelism: moebench.distributed.grad_norm)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if total is None:
        total = nn.utils.get_total_norm([g.norm() if g.is_sparse else g for g in grads])
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        (g.values() if g.is_sparse else g).mul_(coef)


def grads_finite(model: nn.Module) -> bool:
    norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return bool(torch.isfinite(torch.stack(norms)).all()) if norms else True


def finish_router_steps(model: nn.Module, sum_over_ranks: Callable[[Tensor], Tensor]) -> None:
    """Every router's :meth:`~moebench.routers.base.Router.finish_step`, once
    a step's shards have gone backward."""
    for module in model.modules():
        if isinstance(module, Router):
            module.finish_step(sum_over_ranks)


def train_step(model: nn.Module, task: Task, batch: Batch, step: int, optimizer: torch.optim.Optimizer,
               t: TrainerConfig, autocast: torch.autocast,
               expert_parallel: int = 1) -> tuple[Tensor, list[list[LayerStats | None]]] | None:
    """One training step on the global ``batch``: forward, backward, clipping,
    update. Under ``moe.expert_parallel`` = P the batch is P shards, each
    routed as a group of its own: this process's shard when P processes run,
    else every shard in turn, their gradients added up (moebench/distributed.py).
    Returns (the task loss, mean over shards, and the FFN layers' stats of
    each shard run here), or None when the loss or a gradient is NaN/Inf and
    the update was skipped. Its own function so that
    moebench.commands.bench_train times exactly the step that training runs."""
    model.train()
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, t)
    optimizer.zero_grad(set_to_none=True)
    shards = local_shards(batch, expert_parallel)
    losses, shard_stats = [], []
    for shard in shards:
        with autocast:
            loss, task_loss, aux, layer_stats = step_loss(model, task, shard, step)
        # Even a NaN/Inf loss goes backward: every process must join the
        # exchange's backward; the step is skipped below, on every process alike.
        (loss / len(shards)).backward()
        losses.append(torch.stack([loss.detach(), task_loss.detach()]))
        shard_stats.append(layer_stats)
    finish_router_steps(model, sum_over_ranks)  # router state moves once per step, from every shard
    loss, task_loss = mean_over_ranks(torch.stack(losses).mean(0))
    if dist.is_initialized():
        sync_gradients(model)
        total = grad_norm(model)
        finite = bool(torch.isfinite(total))
    else:
        total, finite = None, grads_finite(model)
    if not torch.isfinite(loss) or not finite:
        return None
    if t.grad_clip > 0:
        clip_grad_norm(model, t.grad_clip, total)
    optimizer.step()
    return task_loss, shard_stats


def timed_evaluate(model: nn.Module, task: Task, cfg: RunConfig, batch_size: int) -> tuple[dict, float]:
    """An evaluation on the task's first evaluation split, and the seconds it took."""
    started = time.perf_counter()
    evaluation = evaluate(model, task, task.eval_splits[0], cfg, batch_size)
    return evaluation, time.perf_counter() - started


def train(cfg: RunConfig, task: Task, router_cfg: RouterConfig | None = None, init_from: nn.Module | None = None,
          phase: str = MAIN_PHASE, tracker: Tracker | None = None) -> TrainResult:
    """Train and evaluate one model; ``router_cfg`` overrides ``cfg.router``;
    ``init_from`` starts from another model's matching weights (fine-tuning).
    ``phase`` names the phase in its progress lines and tracked metrics
    (moebench/tracking/progress.py); ``tracker`` receives them.

    Ctrl-C or SIGTERM stops training; the final evaluation then runs with both
    signals held, and one that arrives there also makes the status interrupted:
    "completed" means that no signal came."""
    device = resolve_device(cfg.trainer.device)
    torch.manual_seed(cfg.seed)
    ffn = FFNFactory(router_cfg or cfg.router, cfg.model, cfg.moe, task.data_stats())
    model = task.build_model(cfg.model, ffn).to(device)
    if cfg.moe.expert_parallel > 1 and not any(isinstance(m, MoEBlock) for m in model.modules()):
        raise ConfigError("moe.expert_parallel", cfg.moe.expert_parallel,
                          f"1: router {(router_cfg or cfg.router).name} has no MoE block to shard")
    # Under torchrun each process keeps its share of the experts (before a
    # pretrained model's shard is copied in) and evaluates whole batches, as
    # one process does: the exchange then carries every process's copy, and
    # the meter is read during training steps only.
    meter = ExchangeMeter() if dist.is_initialized() else None
    if meter is not None:
        shard_experts(model, meter=meter)
    exchange = {"a2a_bytes_sent": 0.0, "a2a_seconds": 0.0}
    if init_from is not None:
        copied = load_matching(model, init_from.state_dict())
        log.info("fine-tuning: %d of %d tensors from the pretrained model",
                 len(copied), len(model.state_dict()))
    batch_size = max(1, cfg.trainer.batch_tokens // task.tokens_per_example)
    t = cfg.trainer
    curves: list[dict] = []
    previous_modal = None  # the last evaluation's modal experts, for expert_agreement
    status, interrupted_by, skipped, step = "completed", None, 0, 0
    train_routing = RoutingAccumulator()
    train_flops = TrainFlops()
    window = RoutingAccumulator()
    train_time, tokens_seen = 0.0, 0
    tokens_per_step = batch_size * task.tokens_per_example
    loss_curve = LossCurve(t.max_steps)
    # Under torchrun rank 0 alone reports progress.
    progress = Progress(phase, replace(t, quiet=t.quiet or rank() > 0), task.quality_metric,
                        tracker or NoTracker())
    horizon = None  # a budget in training FLOPs: the step count, re-estimated as it is spent
    evaluated = 0  # evaluations before the final one, so far
    try:
        if t.max_tokens is not None or t.max_train_flops is not None:
            t = replace(t, max_steps=steps_for_budget(model, task, t, batch_size))
            loss_curve = LossCurve(t.max_steps)  # buckets sized for the steps the budget buys
        if t.max_train_flops is not None:
            horizon = Horizon(t.max_train_flops, tokens_per_step, t.max_steps)
        progress.plan(t.max_steps)
        optimizer = make_optimizer(model, t)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.dtype == "bfloat16")
        generator = torch.Generator().manual_seed(cfg.seed)
        max_skipped = t.max_skipped_share * t.max_steps
        for step in itertools.count():
            if step == t.max_steps:
                break
            started = time.perf_counter()
            batch = task.get_batch("train", batch_size, generator).to(device)
            if meter is not None:
                meter.take()  # what evaluations and probes sent is not training's
            done = train_step(model, task, batch, step, optimizer, t, autocast, cfg.moe.expert_parallel)
            if meter is not None:
                for key, value in meter.take().items():
                    exchange[key] += value
            if done is None:
                skipped += 1  # skip the update: NaN/Inf loss or gradients
                if skipped > max_skipped:
                    status = "diverged"
                    log.warning("step %d: %d steps skipped for NaN/Inf, over the %.0f%% allowed",
                                step, skipped, 100 * t.max_skipped_share)
                    break
                if horizon is not None:
                    t = replace(t, max_steps=horizon.step(None))
                    progress.plan(t.max_steps)
                continue
            task_loss, shard_stats = done
            step_flops = 0.0  # forward FLOPs per token, summed over this process's shards
            for layer_stats in shard_stats:
                flops = forward_flops(model, layer_stats, task.tokens_per_example, training=True)
                train_flops.add(flops)
                step_flops += sum(flops.values())
                moe_stats = [s for s in layer_stats if s is not None]
                train_routing.add(moe_stats)
                window.add(moe_stats)
            train_time += time.perf_counter() - started
            tokens_seen += batch.inputs.shape[0] * task.tokens_per_example
            loss_curve.add(step + 1, task_loss, tokens_seen)
            if horizon is not None:  # every process counts every shard's FLOPs, so all stop together
                shards_flops = sum_over_ranks(torch.tensor(step_flops, dtype=torch.float64))
                t = replace(t, max_steps=horizon.step(float(shards_flops) / cfg.moe.expert_parallel))
                progress.plan(t.max_steps)

            if train_flops.steps == 1:  # the first step has measured what a step executes
                progress.start((router_cfg or cfg.router).name, cfg.task.name,
                               cost_metrics(model, layer_stats, task.tokens_per_example)["active_params"],
                               param_count(model), 3 * train_flops.summary()["train_flops_per_token"],
                               tokens_per_step, device)
            if progress.due(step + 1):
                progress.step(step + 1, task_loss.item(), learning_rate(step, t), window.summary(),
                              tokens_seen, train_time)
                window = RoutingAccumulator()
            due = evaluations_due(step + 1, t)
            if due > evaluated:
                evaluated = due
                evaluation, seconds = timed_evaluate(model, task, cfg, batch_size)
                progress.evaluation(step + 1, evaluation, seconds)
                curves.append(curve_point(step + 1, task_loss.item(), evaluation, tokens_seen,
                                          train_flops_spent(train_flops, tokens_seen), previous_modal))
                previous_modal = evaluation.pop("modal_experts")
    except KeyboardInterrupt as stop:
        status, interrupted_by = "interrupted", signal_name(stop)
        log.warning("%s at step %d; evaluating what was trained so far", interrupted_by, step)
    steps_done = step
    if meter is not None:  # each process trained on its own shard: add them up
        train_routing.sum_over_ranks()
        train_flops, *others = gather_from_ranks(train_flops)
        for other in others:
            train_flops.merge(other)

    with held_signals() as held:
        final, seconds = timed_evaluate(model, task, cfg, batch_size)
        progress.evaluation(steps_done, final, seconds, final=True)
        curves.append(curve_point(steps_done, None, final, tokens_seen,
                                  train_flops_spent(train_flops, tokens_seen), previous_modal))
        del final["modal_experts"]  # not for the record
        metrics = {"val_loss": final.pop("loss"), "val_accuracy": final.pop("accuracy"), **final}
        for split in task.eval_splits[1:]:
            other = evaluate(model, task, split, cfg, batch_size, per_token=False)
            metrics.update({f"{split}_loss": other["loss"], f"{split}_accuracy": other["accuracy"],
                            f"{split}_quality": other["quality"]})
        if meter is not None:  # the whole model's parameters, and every process's exchange
            steps = max(steps_done, 1)
            metrics["total_params"] = total_params(model)
            metrics["expert_parallel"] = {
                "world_size": dist.get_world_size(), "backend": dist.get_backend(),
                "per_rank": gather_from_ranks({
                    "a2a_bytes_sent_per_step": exchange["a2a_bytes_sent"] / steps,
                    "a2a_s_per_step": exchange["a2a_seconds"] / steps,
                    "a2a_share_of_train_time": exchange["a2a_seconds"] / train_time if train_time else 0.0,
                    "train_time_s": train_time}),
            }
        metrics.update({
            "train_drop_rate": train_routing.summary().get("drop_rate", 0.0),
            **train_flops.summary(),
            "train_tokens_per_s": tokens_seen / train_time if train_time else 0.0,
            "train_time_s": train_time,
            "steps": steps_done,
            "skipped_steps": skipped,
            **task_causal_leak(model, task, batch_size),
        })
    if held:
        status, interrupted_by = "interrupted", interrupted_by or held[0]
    return TrainResult(status, metrics, curves, model, interrupted_by, loss_curve.finish())
