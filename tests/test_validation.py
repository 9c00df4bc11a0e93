"""Bad input fails before any run starts, in one line (exit code 2): values
types allow but a run cannot use, and sweeps, an experiment's included."""

import shutil

import pytest
import torch

from moebench import compose
from moebench.commands import app
from moebench.commands.options import EXIT_BAD_INPUT


def preflight_error(capsys, *argv: str) -> str:
    """The one line ``python -m moebench *argv`` fails with, before Hydra starts."""
    with pytest.raises(SystemExit) as stop:
        app.preflight(list(argv))
    assert stop.value.code == EXIT_BAD_INPUT
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


@pytest.mark.parametrize("override, allowed", [
    ("seed=1e23", "type int"),
    ("seed=100000000000000000000000", "0..9223372036854775807"),
    ("seed=-1", "0..9223372036854775807"),
    ("trainer.batch_tokens=1e10", "type int"),
    ("trainer.batch_tokens=10000000000", "1..16777216"),
    ("trainer.max_train_flops=inf", "finite"),
    ("model.moe_every=3", "1..2 (model.n_layers)"),  # no MoE layer in a top1 record
    ("trainer.lr=inf", "finite"),
    ("trainer.weight_decay=-1", ">= 0"),
    ("trainer.grad_clip=nan", ">= 0"),
    ("trainer.max_steps=0", ">= 1"),  # an untrained run recorded as completed
    ("moe.capacity_factor=inf", "finite"),
    ("moe.eval_capacity_factor=inf", "finite"),
])
def test_values_a_run_cannot_use_are_refused(capsys, override, allowed):
    line = preflight_error(capsys, override)
    assert override.split("=")[0] in line and allowed in line


@pytest.mark.parametrize("argv, allowed", [
    (["moe.expert_parallel=3"], "a divisor of moe.num_experts=8"),
    (["moe.expert_parallel=0"], "an integer >= 1"),
    # DeepSeekMoE shards its routed experts: 4 x 8 - 1 = 31, which 2 does not divide.
    (["router=deepseek_moe", "moe.expert_parallel=2"], "a divisor of the 31 routed experts"),
])
def test_expert_parallelism_must_divide_the_experts_it_shards(capsys, argv, allowed):
    line = preflight_error(capsys, *argv)
    assert "moe.expert_parallel" in line and allowed in line


def test_deepseek_moe_shards_evenly_without_a_shared_expert():
    app.preflight(["router=deepseek_moe", "router.num_shared=0", "moe.expert_parallel=2"])


def test_a_sequence_longer_than_a_step_is_refused(capsys):
    # Was a 5-minute hang in one attention call over 600k positions that
    # ignored Ctrl-C, then a traceback: the validation split is shorter.
    line = preflight_error(capsys, "task=ptb_char", "model.block_size=600000")
    assert "model.block_size=600000" in line and "trainer.batch_tokens=1024" in line
    # The causality probe swaps one sequence's future into another: two a step.
    line = preflight_error(capsys, "task=shakespeare_char", "model.block_size=1024")
    assert "1..512" in line
    app.preflight(["task=wikitext2_mlm", "model.block_size=1024"])  # not causal: one suffices


def test_soft_moe_slots_follow_the_position_group(capsys):
    """Under position groups a group has B tokens: by default Soft MoE sizes
    its slots for B, not for a sequence (16x the expert FLOPs here); a group
    size set to null is refused with B named."""
    cfg = compose.load_config("router=soft", "task=shakespeare_char", "moe.routing_groups=position",
                          "trainer.batch_tokens=2048")
    assert cfg.router.group_size == 16  # 2048 tokens / 128 per sequence
    assert compose.load_config("router=soft", "task=shakespeare_char", "router.allow_leaky=true").router.group_size is None
    assert compose.load_config("router=soft", "task=synthetic", "moe.routing_groups=position").router.group_size is None
    line = preflight_error(capsys, "router=soft", "task=shakespeare_char", "moe.routing_groups=position",
                           "trainer.batch_tokens=2048", "router.group_size=null")
    assert "router.group_size" in line and "here 16" in line


def test_cuda_without_a_gpu_is_refused_unless_the_jobs_run_elsewhere(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = preflight_error(capsys, "trainer.device=cuda")
    assert "trainer.device='cuda'" in line and "no CUDA GPU" in line
    # A Slurm sweep is checked on a login node that may have no GPU.
    app.preflight(["-m", "hydra/launcher=slurm", "trainer.device=cuda", "seed=0,1"])


@pytest.fixture
def checked_runs(monkeypatch):
    """The runs preflight would compose and validate, recorded instead."""
    runs = []
    monkeypatch.setattr(app, "check_runs", lambda found, loader, runs_here: runs.extend(found))
    return runs


def test_an_experiments_sweep_is_expanded_and_the_command_line_overrides_it(checked_runs):
    app.preflight(["-m", "+experiment=capacity"])
    assert len(checked_runs) == 2 * 6 * 3  # router x capacity factor x seed
    assert ["router=top2", "moe.capacity_factor=0.5", "seed=2", "+experiment=capacity"] in checked_runs
    checked_runs.clear()
    app.preflight(["-m", "+experiment=capacity", "seed=7", "router=top1"])
    assert len(checked_runs) == 6 and all("seed=7" in run for run in checked_runs)
    checked_runs.clear()
    app.preflight(["+experiment=capacity"])  # without -m Hydra makes one run, not the sweep
    assert checked_runs == [["+experiment=capacity"]]


def test_sweep_functions_expand_as_hydra_does(capsys, checked_runs):
    app.preflight(["-m", "router=glob(top*)", "seed=range(0,3)"])
    assert [run[0] for run in checked_runs[::3]] == ["router=top1", "router=top1_frozen", "router=top2", "router=top_p"]
    assert [run[1] for run in checked_runs[:3]] == ["seed=0", "seed=1", "seed=2"]
    line = preflight_error(capsys, "-m", "router=glob(nope*)")
    assert "router='glob(nope*)'" in line and "top1" in line


@pytest.fixture
def conf_with(tmp_path, monkeypatch):
    """``conf_with(name, yaml)``: conf/ plus experiment NAME, as the CLI's config."""

    def add(name: str, text: str) -> None:
        conf = tmp_path / "conf"
        if not conf.exists():
            shutil.copytree(compose.CONF_DIR, conf)
        (conf / "experiment" / f"{name}.yaml").write_text(f"# @package _global_\n{text}")
        monkeypatch.setattr(compose, "CONF_DIR", conf)

    return add


def test_a_bad_value_in_an_experiments_sweep_fails_before_launch(capsys, conf_with):
    conf_with("bad_sweep", "hydra:\n  sweeper:\n    params:\n      router: top1,nope\n")
    line = preflight_error(capsys, "-m", "+experiment=bad_sweep")
    assert "router='nope'" in line and "top2" in line
    conf_with("bad_value", "hydra:\n  sweeper:\n    params:\n      router.k: 1,9\n")
    assert "router.k=9" in preflight_error(capsys, "-m", "+experiment=bad_value")


def test_an_unknown_key_in_an_experiment_is_named(capsys, conf_with):
    conf_with("typo", "trainer:\n  max_stepz: 5\n")
    line = preflight_error(capsys, "+experiment=typo")
    assert line.startswith("moebench: error: In 'experiment/typo': trainer.max_stepz is not a known key")
    assert "max_steps" in line


def test_a_large_sweep_composes_once_per_group_choice_and_reports_progress(capsys, monkeypatch):
    composed = []
    real_compose = app.compose
    monkeypatch.setattr(app, "compose", lambda *a, **kw: composed.append(kw) or real_compose(*a, **kw))
    monkeypatch.setattr(app, "PROGRESS_EVERY_S", 0.0)
    app.preflight(["-m", "router=top1,top2", "seed=range(0,40)", "trainer.lr=1e-3,2e-3"])
    assert len(composed) == 2  # one per router; seeds and rates are applied to a copy
    progress = capsys.readouterr().err.strip().splitlines()
    assert progress[-1] == "moebench: checked 160 of 160 runs"
