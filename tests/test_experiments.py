"""The sweeps in conf/experiment/: each composes, every value it sweeps
composes and validates, and the leaderboard covers what it promises."""

import pytest
from hydra import compose, initialize_config_dir

from moebench.compose import CONF_DIR, group_options, load_config, register_all

EXPERIMENTS = group_options("experiment")


def sweep_params(experiment: str) -> dict[str, list[str]]:
    register_all()
    with initialize_config_dir(version_base=None, config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    return {key: str(values).split(",") for key, values in params.items()}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_swept_value_composes(experiment):
    load_config(f"+experiment={experiment}")
    for key, values in sweep_params(experiment).items():
        for value in values:
            load_config(f"+experiment={experiment}", f"{key}={value}")


def test_the_leaderboard_sweeps_every_router_and_standard_task_over_three_seeds():
    params = sweep_params("leaderboard")
    # enwik8's file is the user's to supply; the masked LM is left out, no affordable
    # budget taking it clearly past the count models (leaderboard.yaml); the oracle is
    # the synthetic task's reference. Each task comes with its budget (conf/cpu_task/).
    assert set(params["+cpu_task"]) == set(group_options("task")) - {"enwik8", "wikitext2_mlm"}
    assert set(params["+cpu_task"]) < set(group_options("cpu_task"))
    for task in params["+cpu_task"]:
        cfg = load_config("+experiment=leaderboard", f"+cpu_task={task}")
        assert cfg.task.name == task and cfg.trainer.max_train_flops > 0 and cfg.moe.routing_groups == "auto"
    assert set(params["router"]) == set(group_options("router")) - {"oracle"}
    assert len(set(params["seed"])) >= 3
    cfg = load_config("+experiment=leaderboard")
    assert (cfg.model.name, cfg.trainer.num_threads, cfg.results_dir) == ("tiny", 1, "results/runs")
