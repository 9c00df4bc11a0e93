"""Progress a researcher can follow: a start-up line per phase, step lines with
learning rate and ETA, a validation line at each evaluation, phases named in
their lines, and trainer.quiet for batch use."""

import logging

import torch

from moebench.config import TrainerConfig
from moebench.run import run
from moebench.tasks.synthetic import SyntheticConfig, SyntheticTask
from moebench.tracking.progress import Progress, clock, si
from moebench.train import train

SHORT = ("trainer.max_steps=4", "trainer.eval_every=2", "trainer.eval_batches=1",
         "trainer.log_every_s=0", "trainer.batch_tokens=256")


def lines_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "moebench.tracking.progress"]


def test_a_run_says_what_it_trains_how_far_it_is_and_how_it_validates(make_config, caplog):
    caplog.set_level(logging.INFO)
    run(make_config(*SHORT))  # the synthetic task: the oracle baseline follows
    lines = lines_of(caplog)
    start = next(line for line in lines if line.startswith("train: "))
    assert start.startswith("train: top1 on synthetic | params ")
    assert " active of 1.06M | budget 4 steps (trainer.max_steps) = 1.02k tokens = " in start
    assert start.endswith("training FLOPs | cpu, 1 thread")
    step = next(line for line in lines if line.startswith("train step    2/4"))
    assert " | lr 3.00e-04 | " in step and " | eta 0:0" in step
    assert any(line.startswith("train val     2/4 | loss ") and " | accuracy 0." in line for line in lines)
    assert any(line.startswith("train val     4/4 (final) | ") for line in lines)
    # The oracle baseline is a second model: its lines say so, its steps count from 1 again.
    oracle = lines.index(next(line for line in lines if line.startswith("oracle: ")))
    assert "oracle on synthetic (the oracle baseline" in lines[oracle]
    assert "steps from 1 again" in lines[oracle]
    assert lines[oracle + 1].startswith("oracle step    1/4 | ")
    assert all(line.startswith("oracle") for line in lines[oracle:])


def test_quiet_keeps_the_start_up_lines_only(make_config, caplog):
    caplog.set_level(logging.INFO)
    run(make_config(*SHORT, "trainer.quiet=true"))
    lines = lines_of(caplog)
    assert [line.split(":")[0] for line in lines] == ["train", "oracle"]


def test_a_quiet_phase_stays_quiet_as_its_steps_are_planned(caplog):
    # Under torchrun every rank but 0 is made quiet; a budget's step count, set
    # and re-estimated during training, must not undo it.
    caplog.set_level(logging.INFO)
    progress = Progress("train", TrainerConfig(quiet=True, log_every_s=0.0), "accuracy", Recorder())
    progress.plan(50)
    progress.step(10, 2.0, 1e-3, {}, 10240, train_time=1.0)
    assert lines_of(caplog) == [] and progress.t.max_steps == 50


def test_a_budget_in_tokens_shows_the_steps_it_buys(make_config, caplog):
    caplog.set_level(logging.INFO)
    cfg = make_config(*SHORT, "task.oracle_baseline=false", "trainer.max_tokens=2560")
    train(cfg, SyntheticTask(cfg.task, cfg.data, cfg.seed))
    assert "budget 10 steps (trainer.max_tokens=2560) = 2.56k tokens = " in lines_of(caplog)[0]


def test_pretraining_is_named_in_its_lines(make_config, caplog):
    caplog.set_level(logging.INFO)
    cfg = make_config(*SHORT, "task.oracle_baseline=false", "transfer.pretrain_steps=2")
    cfg.transfer.pretrain_task = SyntheticConfig(name="synthetic", world_seed=1, oracle_baseline=False)
    run(cfg)
    lines = lines_of(caplog)
    assert lines[0].startswith("pretrain: top1 on synthetic (pretraining; fine-tuning follows) | ")
    assert lines[1].startswith("pretrain step    1/2 | ")
    assert any(line.startswith("train: top1 on synthetic | ") for line in lines[2:])


class Recorder:
    """A tracker that keeps what it is sent."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, step: int, metrics: dict) -> None:
        self.logged.append((step, metrics))


def test_eta_is_the_steps_left_at_the_recent_pace_plus_the_evaluations_left(caplog):
    caplog.set_level(logging.INFO)
    t = TrainerConfig(max_steps=100, eval_every=50, log_every_s=0.0)
    tracker = Recorder()
    progress = Progress("oracle", t, "accuracy", tracker)
    progress.plan(100)
    progress.start("oracle", "synthetic", 1e5, 1_000_000, 2e5, 1024, torch.device("cpu"))
    progress.step(10, 2.0, 1e-3, {"drop_rate": 0.25, "load_cv": 0.5}, 10240, train_time=10.0)
    # 1 s a step so far; then 2 s a step over the last 10 steps, evaluations of 3 s.
    progress.evaluation(10, {"loss": 1.5, "quality": 0.6, "drop_rate": 0.0, "load_cv": 0.1}, seconds=3.0)
    progress.step(20, 1.0, 1e-3, {"drop_rate": 0.25, "load_cv": 0.5}, 20480, train_time=30.0)
    eta = 80 * 2.0 + 2 * 3.0  # steps left at 2 s, the evaluation at 50 and the final one
    assert lines_of(caplog)[-1].endswith(f"eta {clock(eta)}") and clock(eta) == "2:46"
    assert tracker.logged[0] == (10, {"oracle/train/loss": 2.0, "oracle/train/lr": 1e-3,
                                      "oracle/train/tokens_per_s": 1024.0,
                                      "oracle/train/drop_rate": 0.25, "oracle/train/load_cv": 0.5})
    assert tracker.logged[1] == (10, {"oracle/val/loss": 1.5, "oracle/val/accuracy": 0.6,
                                      "oracle/val/drop_rate": 0.0, "oracle/val/load_cv": 0.1})


def test_numbers_are_short():
    assert [si(x) for x in (512, 1024, 1.06e6, 2.3e10, 4e12)] == ["512", "1.02k", "1.06M", "23G", "4T"]
    assert [clock(s) for s in (5, 65, 3725)] == ["0:05", "1:05", "1:02:05"]
