"""Run records: atomic, never overwritten, written on Ctrl-C; runs repeat per seed."""

import json

import pytest

from moebench.record import write_record
from moebench.run import run
from moebench.tasks.synthetic import SyntheticTask
from moebench.train import train

FAST = ("trainer.max_steps=40", "trainer.eval_every=20", "trainer.eval_batches=2",
        "task.oracle_baseline=false")


def test_records_are_never_overwritten(tmp_path):
    path = write_record({"run_id": "a", "x": 1}, tmp_path)
    with pytest.raises(FileExistsError):
        write_record({"run_id": "a", "x": 2}, tmp_path)
    assert json.loads(path.read_text())["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left


def test_ctrl_c_writes_an_interrupted_record(make_config, monkeypatch):
    cfg = make_config(*FAST)
    calls = {"train": 0}
    real_get_batch = SyntheticTask.get_batch

    def get_batch(self, split, batch_size, generator):
        if split == "train":
            calls["train"] += 1
            if calls["train"] == 26:
                raise KeyboardInterrupt
        return real_get_batch(self, split, batch_size, generator)

    monkeypatch.setattr(SyntheticTask, "get_batch", get_batch)
    record = json.loads(run(cfg).read_text())
    assert record["status"] == "interrupted"
    assert record["metrics"]["steps"] == 25
    assert 0 < record["metrics"]["quality"] <= 1
    assert [point["step"] for point in record["curves"]] == [20, 25]


def test_same_seed_same_metrics(make_config):
    cfg = make_config(*FAST, "router=top1", "seed=7")
    task = SyntheticTask(cfg.task, cfg.data, cfg.seed)
    timing = {"train_tokens_per_s", "train_time_s"}
    first, second = train(cfg, task), train(cfg, task)
    strip = lambda m: {k: v for k, v in m.items() if k not in timing}  # noqa: E731
    assert strip(first.metrics) == strip(second.metrics)
    other = train(make_config(*FAST, "router=top1", "seed=8"), task)
    assert other.metrics["val_loss"] != first.metrics["val_loss"]


def test_budget_in_tokens_or_flops_sets_the_steps(make_config):
    from moebench.schedule import budget_steps

    cfg = make_config("trainer.max_tokens=20480").trainer
    assert budget_steps(cfg, tokens_per_step=2048, forward_flops_per_token=1e6) == 10
    cfg = make_config("trainer.max_train_flops=6e10").trainer
    # 6e10 / (3 * 1e6 FLOPs/token * 2048 tokens/step) = 9.77 -> 10 steps
    assert budget_steps(cfg, tokens_per_step=2048, forward_flops_per_token=1e6) == 10
    result = train(make_config(*FAST, "trainer.max_tokens=20480", "trainer.batch_tokens=2048"),
                   SyntheticTask(cfg=make_config().task, data=None, seed=0))
    assert result.metrics["steps"] == 10


def test_only_one_budget_at_a_time(make_config):
    from moebench.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.max_train_flops"):
        make_config("trainer.max_tokens=100", "trainer.max_train_flops=1e9")


def test_a_rerun_skips_a_completed_run_but_not_an_interrupted_one(make_config, monkeypatch):
    cfg = make_config(*FAST)
    first = run(cfg)
    assert run(cfg) == first  # resumed sweep: nothing retrained
    assert len(list(first.parent.glob("*.json"))) == 1
    other = run(make_config(*FAST, "seed=1"))  # another config is another run
    assert other != first
    record = json.loads(first.read_text())
    record.update(status="interrupted", run_id=record["run_id"] + "-x")
    interrupted_dir = first.parent.parent / "interrupted"
    write_record(record, interrupted_dir)
    cfg_elsewhere = make_config(*FAST, f"results_dir={interrupted_dir}")
    assert run(cfg_elsewhere).parent == interrupted_dir
    assert len(list(interrupted_dir.glob("*.json"))) == 2  # the interrupted one was redone


def test_mid_run_evaluations_do_not_change_the_training(make_config):
    """top-2 draws its `random` second experts at evaluation too; those draws
    come from evaluation's own seeded stream, so evaluating every 2 steps or
    never trains the same model."""
    cfg = make_config(*FAST)
    task = SyntheticTask(cfg.task, cfg.data, cfg.seed)
    final = {}
    for every in (2, 1000):
        # threshold 1: a near-uniform gate keeps its second expert half the time
        cfg = make_config(*FAST, "router=top2", "router.second_threshold=1.0", "trainer.max_steps=6",
                          f"trainer.eval_every={every}")
        final[every] = train(cfg, task).metrics["val_loss"]
    assert final[2] == final[1000]


def test_default_threads_are_half_the_usable_cores(monkeypatch):
    """On a shared 2-core machine all cores ran 2-3x slower than one thread
    once another process kept a core busy (README, "CPU threads")."""
    from moebench.train import resolve_threads

    for cores, expected in [({0}, 1), ({0, 1}, 1), (set(range(16)), 8)]:
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, cores=cores: cores)
        assert resolve_threads(None) == expected
    assert resolve_threads(3) == 3  # trainer.num_threads as set
