"""Run configuration: dataclasses registered as Hydra structured configs.

Hydra checks types and unknown keys while it composes; :func:`validate` then
checks what types cannot say (ranges, choices, cross-field rules), so a bad
value fails in the first second with a message naming key, value and the
allowed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from moebench.errors import ConfigError
from moebench.moe.dispatch import DROP_POLICIES
from moebench.moe.experts import ACTIVATIONS, IMPLS
from moebench.moe.grouping import ROUTING_GROUPS, future_leak

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer
# 16M tokens a step, 5x GPT-3's batch: anything larger is a typo, which would
# otherwise fail allocating memory rather than at start-up.
MAX_BATCH_TOKENS = 2**24


@dataclass
class ModelConfig:
    name: str = MISSING
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256  # width of one expert, and of the dense FFN layers
    moe_every: int = 1  # every n-th layer's FFN is an MoE block (1: all)
    activation: str = "gelu"
    dropout: float = 0.0
    block_size: int = 128  # context length of the sequence models


@dataclass
class MoEConfig:
    num_experts: int = 8
    capacity_factor: float = 1.25  # train; Switch Transformer's default
    eval_capacity_factor: float = 2.0
    dropless: bool = False
    drop_policy: str = "position"  # position | score (batch-prioritized routing)
    impl: str = "auto"  # auto | torch | triton
    # all: route the batch's tokens together; position: one routing group per
    # sequence position, causal-safe for every router (moe/grouping.py).
    routing_groups: str = "all"


@dataclass
class TrainerConfig:
    # The budget: steps, or (to compare routers at equal compute) tokens or
    # training FLOPs, from which the steps are derived. Set at most one of the two.
    max_steps: int = 300
    max_tokens: Optional[int] = None
    max_train_flops: Optional[float] = None
    batch_tokens: int = 1024  # tokens per step; examples = batch_tokens // tokens per example
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    log_every_s: float = 2.0
    device: str = "auto"
    num_threads: Optional[int] = None  # torch CPU threads; 1 per job for parallel sweeps
    dtype: str = "float32"  # autocast dtype on CUDA; the router stays float32
    # A run that skips more than this share of steps (NaN/Inf loss or
    # gradients) ends with status "diverged".
    max_skipped_share: float = 0.1


@dataclass
class DataConfig:
    # Where data sets live; tests and CI point it at ../shared/data.
    root: Optional[str] = "${oc.env:MOEBENCH_DATA,null}"
    cache_dir: Optional[str] = None  # tokenized arrays; default $XDG_CACHE_HOME/moebench


@dataclass
class TransferConfig:
    """Pretrain on one task, then fine-tune on ``task`` (conf/experiment/transfer.yaml)."""

    pretrain_task: Any = None  # a TaskConfig, composed from conf/task by Hydra
    pretrain_steps: int = 300


@dataclass
class RunConfig:
    router: Any = MISSING  # a RouterConfig subclass, chosen by router=NAME
    task: Any = MISSING  # a TaskConfig subclass, chosen by task=NAME
    model: ModelConfig = MISSING
    trainer: TrainerConfig = MISSING
    moe: MoEConfig = field(default_factory=MoEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    seed: int = 0
    results_dir: str = "results/runs"


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/trainer", name="trainer", node=TrainerConfig)


def _check(ok: bool, key: str, value: object, allowed: object) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def validate(cfg: RunConfig, runs_here: bool = True) -> None:
    """Semantic checks that types alone cannot express. ``runs_here``: the run
    will execute on this machine, so its devices can be checked (not for a
    sweep sent to a cluster)."""
    from moebench.routers import ROUTERS
    from moebench.tasks import TASKS

    router_cls, task_cls = ROUTERS.get(cfg.router.name).cls, TASKS.get(cfg.task.name).cls
    if cfg.transfer.pretrain_task is not None:
        TASKS.get(cfg.transfer.pretrain_task.name)
        _check(cfg.transfer.pretrain_steps >= 1, "transfer.pretrain_steps",
               cfg.transfer.pretrain_steps, "an integer >= 1")
    _check(0 <= cfg.seed <= MAX_SEED, "seed", cfg.seed, f"an integer in 0..{MAX_SEED} (2^63 - 1)")
    _validate_moe(cfg, router_cls, task_cls)
    _validate_model(cfg.model)
    _validate_trainer(cfg.trainer, runs_here)
    block_size = getattr(cfg.task, "block_size", None)
    if block_size is not None:
        _validate_block_size(cfg, block_size, task_cls.causal)


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
    _check(moe.routing_groups in ROUTING_GROUPS, "moe.routing_groups", moe.routing_groups,
           ROUTING_GROUPS)
    leak = future_leak(cfg.router.name, router_cls, moe)
    if leak and task_cls.causal and not cfg.router.allow_leaky:
        raise ConfigError("moe.routing_groups", moe.routing_groups,
                          f"position on the causal task {cfg.task.name}, since {leak}; or "
                          "router.allow_leaky=true to run it anyway and record the measured causal_leak")


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
