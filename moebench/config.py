"""Run configuration: plain dataclasses registered as Hydra structured configs.

Hydra checks types and unknown keys while it composes; what types cannot say
(ranges, choices, cross-field rules) is checked by moebench/validation.py,
which knows the router and task registries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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
    # Expert parallelism (moe/expert_parallel.py): the experts sharded over
    # this many processes, each routing its shard of the batch as a group of
    # its own. Under torchrun (as many processes) they are real processes; on
    # one process the shards are micro-batches: the same model, trained alike.
    expert_parallel: int = 1
    # Processes the communication metrics simulate (metrics/communication.py).
    comm_ranks: int = 8
    # What an expert is (moe/expert_kinds.py): standard, E independent FFNs;
    # lora, one shared FFN plus a rank-lora_rank delta per expert on each of
    # its matrices (Zadouri et al. 2023's MoLORA); heterogeneous, E FFNs of
    # the widths expert_widths (Wang et al. 2024's HMoE); under any router.
    experts: str = "standard"  # standard | lora | heterogeneous
    lora_rank: int = 4  # MoLORA's rank (for-ai/parameter-efficient-moe, configs/molora.gin)
    expert_widths: Optional[list[int]] = None  # one per expert, with experts=heterogeneous


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
    # Evaluate at this many evenly spaced steps, the last at the final step
    # (schedule.evaluations_due), whatever the budget's step count; null: every
    # eval_every steps. When set, it wins over eval_every.
    eval_points: Optional[int] = None
    eval_batches: int = 8
    log_every_s: float = 2.0
    # Batch use: no step or validation lines. The start-up line of each phase,
    # warnings, errors and the summary still print (moebench/tracking/progress.py).
    quiet: bool = False
    device: str = "auto"
    # torch CPU threads; null: half the usable cores (train.resolve_threads); 1 per job for sweeps
    num_threads: Optional[int] = None
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
    # A budget in training FLOPs (as trainer.max_train_flops); wins over pretrain_steps.
    pretrain_train_flops: Optional[float] = None


@dataclass
class LoggerConfig:
    """Run tracking, chosen by logger=NAME (conf/logger/, moebench/tracking/):
    none (the default), csv or tensorboard; wandb and mlflow add their keys below."""

    name: str = "none"  # none | csv | tensorboard | wandb | mlflow
    # Shared by every run (each in its own subfolder), so one TensorBoard or
    # MLflow UI compares a sweep's runs; relative to where the command starts, as results_dir.
    save_dir: str = "tracking"


@dataclass
class WandbLoggerConfig(LoggerConfig):
    project: str = "moebench"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online (after `wandb login`) | disabled


@dataclass
class MLflowLoggerConfig(LoggerConfig):
    experiment_name: str = "moebench"
    tracking_uri: Optional[str] = None  # null: file:<save_dir>/mlruns, a local store; or a server's URI


@dataclass
class RunConfig:
    router: Any = MISSING  # a RouterConfig subclass, chosen by router=NAME
    task: Any = MISSING  # a TaskConfig subclass, chosen by task=NAME
    model: ModelConfig = MISSING
    trainer: TrainerConfig = MISSING
    moe: MoEConfig = field(default_factory=MoEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    logger: Any = field(default_factory=LoggerConfig)  # a LoggerConfig subclass, chosen by logger=NAME
    seed: int = 0
    results_dir: str = "results/runs"


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/trainer", name="trainer", node=TrainerConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    cs.store(group="schema/logger", name="wandb", node=WandbLoggerConfig)
    cs.store(group="schema/logger", name="mlflow", node=MLflowLoggerConfig)
