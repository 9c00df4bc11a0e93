"""Semantic checks of a RunConfig that types alone cannot express: ranges,
choices and cross-field rules, so a bad value fails in the first second with
one line naming the key, the value and the allowed values (ConfigError).

This layer knows the router and task registries and the MoE block's options;
the config dataclasses themselves (moebench/config.py) know nothing of them.
"""

from __future__ import annotations

import math

import torch

from moebench.config import ModelConfig, MoEConfig, RunConfig, TrainerConfig
from moebench.errors import ConfigError
from moebench.moe.dispatch import DROP_POLICIES
from moebench.moe.expert_kinds import EXPERT_KINDS
from moebench.moe.experts import ACTIVATIONS, IMPLS
from moebench.moe.grouping import ROUTING_GROUPS, future_leak
from moebench.routers import ROUTERS
from moebench.routers.base import Router
from moebench.tasks import TASKS
from moebench.tracking import check_logger

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer
# 16M tokens a step, 5x GPT-3's batch: anything larger is a typo, which would
# otherwise fail allocating memory rather than at start-up.
MAX_BATCH_TOKENS = 2**24


def _check(ok: bool, key: str, value: object, allowed: object) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def validate(cfg: RunConfig, runs_here: bool = True) -> None:
    """Semantic checks that types alone cannot express. ``runs_here``: the run
    will execute on this machine, so its devices can be checked (not for a
    sweep sent to a cluster)."""
    router_cls, task_cls = ROUTERS.get(cfg.router.name).cls, TASKS.get(cfg.task.name).cls
    if cfg.transfer.pretrain_task is not None:
        TASKS.get(cfg.transfer.pretrain_task.name)
        _check(cfg.transfer.pretrain_steps >= 1, "transfer.pretrain_steps",
               cfg.transfer.pretrain_steps, "an integer >= 1")
        flops = cfg.transfer.pretrain_train_flops
        _check(flops is None or (_finite(flops) and flops > 0), "transfer.pretrain_train_flops",
               flops, "null or a finite number > 0")
    _check(0 <= cfg.seed <= MAX_SEED, "seed", cfg.seed, f"an integer in 0..{MAX_SEED} (2^63 - 1)")
    _validate_moe(cfg, router_cls, task_cls)
    _validate_freeze(cfg)
    _validate_model(cfg.model)
    _validate_trainer(cfg.trainer, runs_here)
    check_logger(cfg.logger, runs_here)
    block_size = getattr(cfg.task, "block_size", None)
    if block_size is not None:
        _validate_block_size(cfg, block_size, task_cls.causal)
        _validate_slots_for_position_groups(cfg, block_size)
    _validate_expert_parallel(cfg, block_size or 1)


def _validate_moe(cfg: RunConfig, router_cls: type, task_cls: type) -> None:
    moe = cfg.moe
    E = moe.num_experts
    _check(E >= 1, "moe.num_experts", E, "an integer >= 1")
    _check(1 <= cfg.router.k <= E, "router.k", cfg.router.k, f"1..{E} (moe.num_experts)")
    for key, value in [("moe.capacity_factor", moe.capacity_factor),
                       ("moe.eval_capacity_factor", moe.eval_capacity_factor)]:
        _check(_finite(value) and value > 0, key, value, "a finite number > 0")
    _check(moe.drop_policy in DROP_POLICIES, "moe.drop_policy", moe.drop_policy, DROP_POLICIES)
    _check(moe.impl in IMPLS, "moe.impl", moe.impl, IMPLS)
    _check(moe.experts in EXPERT_KINDS, "moe.experts", moe.experts, EXPERT_KINDS)
    _check(moe.lora_rank >= 0, "moe.lora_rank", moe.lora_rank,
           "an integer >= 0 (0: every expert is the shared FFN)")
    _check(moe.experts == "standard" or moe.impl != "triton", "moe.impl", moe.impl,
           f"auto or torch with moe.experts={moe.experts} (these experts run in PyTorch)")
    _validate_expert_widths(moe)
    _check(moe.routing_groups in ROUTING_GROUPS, "moe.routing_groups", moe.routing_groups,
           ROUTING_GROUPS)
    leak = future_leak(router_cls, cfg.router, moe)
    if leak and task_cls.causal and not cfg.router.allow_leaky:
        raise ConfigError("moe.routing_groups", moe.routing_groups,
                          f"position on the causal task {cfg.task.name}, since {leak}; or "
                          "router.allow_leaky=true to run it anyway and record the measured causal_leak")


def _validate_expert_widths(moe: MoEConfig) -> None:
    """Heterogeneous experts need one width >= 1 per expert; other kinds take none."""
    widths, E = moe.expert_widths, moe.num_experts
    if moe.experts != "heterogeneous":
        _check(widths is None, "moe.expert_widths", widths, "null unless moe.experts=heterogeneous")
        return
    _check(widths is not None and len(widths) == E and all(w >= 1 for w in widths), "moe.expert_widths",
           widths, f"a list of {E} (moe.num_experts) integers >= 1 with moe.experts=heterogeneous")


def _validate_freeze(cfg: RunConfig) -> None:
    """``router.freeze`` needs parameters that learn the routing (Router.learns_routing)."""
    if not cfg.router.freeze:
        return
    freezable = [name for name in ROUTERS.names() if getattr(ROUTERS.get(name).cls, "learns_routing", False)]
    _check(cfg.router.name in freezable, "router.freeze", True,
           f"false for router {cfg.router.name}, which has no randomly initialized routing to keep; "
           f"true for {', '.join(freezable)}")


def _validate_slots_for_position_groups(cfg: RunConfig, block_size: int) -> None:
    """A router whose slots are sized for its group's tokens (Soft MoE's
    ``router.group_size``, by default a sequence) must be told the size of a
    position group, B = trainer.batch_tokens / block_size tokens, or it mixes
    B tokens into a sequence's worth of slots: many times the expert FLOPs."""
    r, groups = cfg.router, cfg.moe.routing_groups
    by_position = groups == "position" or (groups == "auto" and TASKS.get(cfg.task.name).cls.causal)
    if by_position and hasattr(r, "group_size") and r.group_size is None and r.slots_per_expert is None:
        B = cfg.trainer.batch_tokens // block_size
        raise ConfigError("router.group_size", None,
                          f"the tokens of a position group under moe.routing_groups=position, here "
                          f"{B} (trainer.batch_tokens / block size), or set router.slots_per_expert")


def _validate_expert_parallel(cfg: RunConfig, tokens_per_example: int) -> None:
    """Expert parallelism shards the experts and the examples of a step evenly."""
    P, router_cls = cfg.moe.expert_parallel, ROUTERS.get(cfg.router.name).cls
    _check(P >= 1, "moe.expert_parallel", P, "an integer >= 1")
    if issubclass(router_cls, Router):  # PEER's and muMoE's layers have no experts to shard (train.py says so)
        E, set_by = router_cls.sharded_experts(cfg.router, cfg.moe)
        _check(E % P == 0, "moe.expert_parallel", P, f"a divisor of {set_by}")
    _check(P == 1 or cfg.moe.experts == "standard", "moe.expert_parallel", P,
           f"1 with moe.experts={cfg.moe.experts} (only standard experts are sharded)")
    examples = cfg.trainer.batch_tokens // tokens_per_example
    _check(examples % P == 0, "moe.expert_parallel", P,
           f"a divisor of the {examples} examples a step (trainer.batch_tokens / block size)")
    _check(cfg.moe.comm_ranks >= 1, "moe.comm_ranks", cfg.moe.comm_ranks, "an integer >= 1")


def _validate_model(m: ModelConfig) -> None:
    _check(m.activation in ACTIVATIONS, "model.activation", m.activation, ACTIVATIONS)
    for key, value in [("model.d_model", m.d_model), ("model.n_layers", m.n_layers),
                       ("model.n_heads", m.n_heads), ("model.d_ff", m.d_ff),
                       ("model.block_size", m.block_size)]:
        _check(value >= 1, key, value, "an integer >= 1")
    # moe_every > n_layers would build no MoE layer at all: a dense model under a router's name.
    _check(1 <= m.moe_every <= m.n_layers, "model.moe_every", m.moe_every,
           f"1..{m.n_layers} (model.n_layers)")
    _check(m.d_model % m.n_heads == 0, "model.n_heads", m.n_heads,
           f"a divisor of model.d_model={m.d_model}")
    _check(0 <= m.dropout < 1, "model.dropout", m.dropout, "0 <= dropout < 1")


def _validate_trainer(t: TrainerConfig, runs_here: bool) -> None:
    # A budget of 0 steps would record an untrained model as a completed run.
    _check(t.max_steps >= 1, "trainer.max_steps", t.max_steps, "an integer >= 1")
    _check(t.max_tokens is None or t.max_train_flops is None, "trainer.max_train_flops",
           t.max_train_flops, "null when trainer.max_tokens is set (one budget at a time)")
    _check(t.max_tokens is None or t.max_tokens >= 1, "trainer.max_tokens", t.max_tokens,
           "null or an integer >= 1")
    _check(t.max_train_flops is None or (_finite(t.max_train_flops) and t.max_train_flops > 0),
           "trainer.max_train_flops", t.max_train_flops, "null or a finite number > 0")
    _check(1 <= t.batch_tokens <= MAX_BATCH_TOKENS, "trainer.batch_tokens", t.batch_tokens,
           f"1..{MAX_BATCH_TOKENS}")
    for key, value in [("trainer.eval_every", t.eval_every), ("trainer.eval_batches", t.eval_batches)]:
        _check(value >= 1, key, value, "an integer >= 1")
    _check(t.eval_points is None or t.eval_points >= 1, "trainer.eval_points", t.eval_points,
           "null (every trainer.eval_every steps) or an integer >= 1")
    _check(t.warmup_steps >= 0, "trainer.warmup_steps", t.warmup_steps, "an integer >= 0")
    _check(_finite(t.lr) and t.lr > 0, "trainer.lr", t.lr, "a finite number > 0")
    _check(0 <= t.min_lr_ratio <= 1, "trainer.min_lr_ratio", t.min_lr_ratio, "0..1")
    _check(_finite(t.weight_decay) and t.weight_decay >= 0, "trainer.weight_decay",
           t.weight_decay, "a finite number >= 0")
    _check(_finite(t.grad_clip) and t.grad_clip >= 0, "trainer.grad_clip", t.grad_clip,
           "a finite number >= 0 (0: no clipping)")
    _check(t.num_threads is None or t.num_threads >= 1, "trainer.num_threads", t.num_threads,
           "null or an integer >= 1")
    _check(t.device in DEVICES, "trainer.device", t.device, DEVICES)
    if runs_here and t.device == "cuda":
        _check(torch.cuda.is_available(), "trainer.device", t.device,
               "auto or cpu: this machine has no CUDA GPU that torch can use")
    _check(t.dtype in DTYPES, "trainer.dtype", t.dtype, DTYPES)
    _check(0 <= t.max_skipped_share <= 1, "trainer.max_skipped_share", t.max_skipped_share, "0..1")


def _validate_block_size(cfg: RunConfig, block_size: int, causal: bool) -> None:
    """A sequence task's examples must fit a step: at least one sequence, and two
    on a causal task, whose causality probe swaps one's future into the other.
    (That the data holds a window is checked where the task loads it.)"""
    # task.block_size follows model.block_size unless set: name the key the user set.
    key = "model.block_size" if block_size == cfg.model.block_size else "task.block_size"
    per_step, sequences = (2, "two sequences") if causal else (1, "one sequence")
    _check(1 <= block_size <= cfg.trainer.batch_tokens // per_step, key, block_size,
           f"1..{cfg.trainer.batch_tokens // per_step}: trainer.batch_tokens="
           f"{cfg.trainer.batch_tokens} must hold {sequences} a step")
