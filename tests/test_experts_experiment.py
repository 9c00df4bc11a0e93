"""The expert-count sweep (conf/experiment/experts.yaml; Clark et al. 2022,
"Unified Scaling Laws for Routed Language Models", Figure 1): it launches the
intended runs, each composes and validates, and every router's active FLOPs
per token are the same at every E and equal the dense E = 1 model's.
(tests/test_experiments.py checks each swept value through the command line.)"""

import copy
import os

import pytest
import torch
from hydra import compose
from hydra.types import RunMode
from omegaconf import OmegaConf

from moebench.commands.app import expand_sweeps, parse_checked
from moebench.compose import hydra_context, load_config
from moebench.config import RunConfig
from moebench.metrics.flops import ffn_flops
from moebench.models.ffn import FFNFactory
from moebench.moe.block import LayerStats, MoEBlock
from moebench.routers.base import DataStats
from moebench.tasks import TASKS as TASK_REGISTRY
from moebench.schedule import steps_for_budget
from moebench.validation import validate

EXPERIMENT = "+experiment=experts"
DENSE = ("router=dense", "moe.num_experts=1")  # the second command: E = 1
TASKS = ("shakespeare_char", "synthetic")
ROUTERS = ("top1", "hash", "sbase", "rl", "base", "deepseek_moe")
EXPERTS = (4, 8, 16, 32, 64)
SEEDS = ("0", "1", "2")


def sweep(*overrides: str) -> list[dict[str, str]]:
    """The runs of ``python -m moebench -m +experiment=experts *overrides``, as
    Hydra's basic sweeper makes them (the command line replaces a swept key)."""
    with hydra_context() as app:
        master = app.compose_config("config", [EXPERIMENT, *overrides], run_mode=RunMode.MULTIRUN,
                                    validate_sweep_overrides=False)
        params = [f"{key}={value}" for key, value in master.hydra.sweeper.params.items()]
        runs = expand_sweeps(parse_checked([*params, EXPERIMENT, *overrides], app.config_loader))
    return [dict(override.split("=", 1) for override in run) for run in runs]


def test_the_two_commands_run_every_router_at_every_E_and_dense_once_per_task_and_seed():
    runs = [(r["+experts_task"], r["router"], int(r["moe.num_experts"]), r["seed"])
            for r in sweep() + sweep(*DENSE)]
    expected = {(t, r, E, s) for t in TASKS for r in ROUTERS for E in EXPERTS for s in SEEDS}
    expected |= {(t, "dense", 1, s) for t in TASKS for s in SEEDS}
    assert len(runs) == len(set(runs)) and set(runs) == expected


@pytest.fixture(scope="module")
def configs() -> dict[tuple[str, str, int], RunConfig]:
    """The composed and validated RunConfig of every (task, router, E) of the
    two commands (the seeds' runs differ in nothing else): one composition per
    task and router, E set as the sweep's override sets it. Validation fails
    e.g. base or sbase on the causal task without position groups."""
    out = {}
    with hydra_context():
        for task in TASKS:
            for router, experts in [*((r, EXPERTS) for r in ROUTERS), ("dense", (1,))]:
                composed = compose("config", [EXPERIMENT, f"+experts_task={task}", f"router={router}"])
                for E in experts:
                    run = copy.deepcopy(composed)
                    run.moe.num_experts = E
                    out[task, router, E] = OmegaConf.to_object(run)
                    validate(out[task, router, E])
    return out


def dense_tokens_at_budget(cfg: RunConfig) -> int:
    """The tokens the dense model ``cfg`` trains on at its task's leaderboard
    budget in training FLOPs, counted as a run counts them (Tiny Shakespeare:
    from its data, which CI has at MOEBENCH_DATA)."""
    if cfg.task.name != "synthetic" and not os.environ.get("MOEBENCH_DATA"):
        pytest.skip("MOEBENCH_DATA is not set")
    leaderboard = load_config("+experiment=leaderboard", f"+cpu_task={cfg.task.name}", "router=dense")
    task = TASK_REGISTRY.get(cfg.task.name).cls(leaderboard.task, leaderboard.data, seed=0)
    torch.manual_seed(0)
    model = task.build_model(leaderboard.model, FFNFactory(leaderboard.router, leaderboard.model,
                                                           leaderboard.moe, task.data_stats()))
    batch = leaderboard.trainer.batch_tokens // task.tokens_per_example
    return steps_for_budget(model, task, leaderboard.trainer, batch) * batch * task.tokens_per_example


@pytest.mark.parametrize("task", TASKS)
def test_every_E_trains_on_the_dense_models_tokens_at_the_leaderboard_budget(configs, task):
    # The FLOPs budget counts the experts as executed on the first batch, when a
    # learned gate drops the most tokens: top1 at E = 64 got 1.76x dense's steps.
    tokens = dense_tokens_at_budget(configs[task, "dense", 1])
    for (t, router, E), cfg in configs.items():
        if t == task:
            assert (cfg.trainer.max_tokens, cfg.trainer.max_train_flops) == (tokens, None), (router, E)
            # The oracle sends cluster c to expert c % E: one expert per cluster only at
            # E = 8. Beside every run it would double the cost and, at E = 64, drop most tokens.
            assert not getattr(cfg.task, "oracle_baseline", False), (router, E)
    if task == "synthetic":
        assert load_config("+experiment=leaderboard", "+cpu_task=synthetic").task.oracle_baseline


def undropped(k: int) -> LayerStats:
    """One token that reached its k experts: the analytic cost, no capacity."""
    return LayerStats(routed_E=torch.zeros(1), kept_E=torch.zeros(1), expert_rows=k, dropped=0,
                      experts_per_token_T=torch.tensor([k]), top_expert_T=torch.tensor([0]),
                      row_expert_R=torch.arange(k))


def ffn_layer_flops(cfg: RunConfig) -> tuple[float, float]:
    """(active FLOPs, gate FLOPs) per token of the model's FFN layers, built as
    a run builds them; attention, embeddings and head do not depend on the
    router or E. The vocabulary (hash routing's table) costs no FLOPs."""
    factory = FFNFactory(cfg.router, cfg.model, cfg.moe, DataStats(vocab_size=65))
    active = gate = 0.0
    for i in range(cfg.model.n_layers):
        layer = factory(i)
        blocks = [m for m in layer.modules() if isinstance(m, MoEBlock)]
        flops = layer.flops_per_token(undropped(blocks[0].k) if blocks else None)
        gate += flops.pop("router", 0.0)
        active += sum(flops.values())
    return active, gate


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("router", ROUTERS)
def test_active_flops_per_token_are_the_dense_models_at_every_E(configs, task, router):
    m = configs[task, "dense", 1].model
    dense = m.n_layers * ffn_flops(m.d_model, m.d_ff, m.activation)  # one FFN of width d_ff a layer
    assert ffn_layer_flops(configs[task, "dense", 1]) == (dense, 0.0)
    for E in EXPERTS:
        active, gate = ffn_layer_flops(configs[task, router, E])
        assert active == dense, (router, E)
        # The one cost that grows with E: a gate over the routed experts (none for hash;
        # DeepSeekMoE's 4E - 1 fine-grained ones).
        routed = {"hash": 0, "deepseek_moe": 4 * E - 1}.get(router, E)
        assert gate == m.n_layers * 2 * m.d_model * routed, (router, E)
