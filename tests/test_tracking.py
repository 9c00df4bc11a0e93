"""Run tracking (logger=...): every backend gets the train and val metrics of
every phase and the config; a bad or missing backend fails before training;
tracking never changes a run's identity."""

import csv
import json

import pytest
from hydra import compose
from omegaconf import OmegaConf

from moebench import tracking
from moebench.compose import hydra_context
from moebench.errors import ConfigError
from moebench.record import config_hash
from moebench.run import run

# 3 steps, validated after step 2 and at the end; the synthetic task's oracle baseline follows.
SHORT = ("trainer.max_steps=3", "trainer.eval_every=2", "trainer.eval_batches=1",
         "trainer.log_every_s=0", "trainer.batch_tokens=256")


def tracked_run(make_config, tmp_path, logger: str, *overrides: str) -> dict:
    """Run with ``logger``; return its record."""
    cfg = make_config(*SHORT, f"logger={logger}", f"logger.save_dir={tmp_path / 'tracking'}", *overrides)
    return json.loads(run(cfg).read_text())


def test_csv_holds_every_phase_and_the_config(make_config, tmp_path):
    record = tracked_run(make_config, tmp_path, "csv")
    (run_dir,) = (tmp_path / "tracking" / "csv").iterdir()
    assert run_dir.name.startswith(f"synthetic-top1-s0-{record['config_hash']}-")  # found from its record
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = lambda name: [int(r["step"]) for r in rows if r["name"] == name]  # noqa: E731
    assert steps("train/loss") == steps("train/lr") == steps("train/drop_rate") == [1, 2, 3]
    assert steps("val/loss") == steps("val/accuracy") == [2, 3]
    assert steps("oracle/train/loss") == [1, 2, 3] and steps("oracle/val/accuracy") == [2, 3]
    final = next(r for r in rows if r["name"] == "val/accuracy" and r["step"] == "3")
    assert float(final["value"]) == pytest.approx(record["metrics"]["quality"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["router"]["name"] == "top1" and config["trainer"]["max_steps"] == 3


def test_tensorboard_scalars_read_back(make_config, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record = tracked_run(make_config, tmp_path, "tensorboard")
    (run_dir,) = (tmp_path / "tracking" / "tensorboard").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("oracle/val/accuracy")] == [2, 3]
    assert events.Scalars("val/accuracy")[-1].value == pytest.approx(record["metrics"]["quality"])
    assert "config/text_summary" in events.Tags()["tensors"]


def test_wandb_offline_run_holds_the_metrics(make_config, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracked_run(make_config, tmp_path, "wandb", "logger.project=routers")
    (run_file,) = (tmp_path / "tracking" / "wandb").glob("offline-run-*/run-*.wandb")
    data = run_file.read_bytes()  # wandb's own log of protobuf records: the names are verbatim
    for name in (b"train/loss", b"train/lr", b"val/accuracy", b"oracle/val/accuracy", b"routers"):
        assert name in data, name


def test_mlflow_local_store_holds_the_metrics(make_config, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as the backend sets it, but undone after
    record = tracked_run(make_config, tmp_path, "mlflow", "logger.experiment_name=routers")
    client = MlflowClient(tracking_uri=(tmp_path / "tracking" / "mlruns").as_uri())
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("routers").experiment_id])
    assert mlflow_run.info.status == "FINISHED"
    run_id = mlflow_run.info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3]
    history = client.get_metric_history(run_id, "val/accuracy")
    assert history[-1].value == pytest.approx(record["metrics"]["quality"])
    assert [m.step for m in client.get_metric_history(run_id, "oracle/val/accuracy")] == [2, 3]
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.json"]


def test_a_backend_not_installed_fails_before_training_naming_the_pip_package(make_config, tmp_path,
                                                                              monkeypatch):
    # tensorboard (installed with the dev extra) made to look missing
    logger = make_config("logger=tensorboard").logger
    monkeypatch.setitem(tracking.BACKENDS, "tensorboard", tracking.Backend(
        "moebench.tracking.tensorboard_log", "moebench_no_such_package", "tensorboard"))
    monkeypatch.setattr("moebench.run.train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ConfigError) as error:
        tracked_run(make_config, tmp_path, "tensorboard")
    (line,) = str(error.value).splitlines()
    assert line.startswith("logger='tensorboard' is not valid; allowed: none, csv")
    assert line.endswith("tensorboard needs `pip install tensorboard`")
    tracking.check_logger(logger, runs_here=False)  # a sweep sent to a cluster: its machines' to have


def test_a_wandb_mode_must_be_known(make_config):
    with pytest.raises(ConfigError, match="logger.mode='sometimes'.*offline, online, disabled"):
        tracking.check_logger(make_config("logger=wandb", "logger.mode=sometimes").logger)


def test_an_unknown_backend_names_the_known_ones(make_config):
    with pytest.raises(ConfigError, match="logger.name='nope'.*none, csv, tensorboard, wandb, mlflow"):
        tracking.check_logger(make_config("logger.name=nope").logger)


def test_tracking_and_quiet_do_not_change_a_runs_identity():
    def digest(*overrides: str) -> str:
        # Composed, not validated: a backend need not be installed to be hashed.
        with hydra_context():
            return config_hash(OmegaConf.to_container(compose("config", overrides=list(overrides)),
                                                      resolve=True))

    plain = digest()
    assert digest("logger=csv", "logger.save_dir=elsewhere", "trainer.quiet=true") == plain
    assert digest("logger=mlflow", "logger.experiment_name=x") == plain
    assert digest("trainer.lr=0.001") != plain
