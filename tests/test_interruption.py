"""Ctrl-C and SIGTERM: every phase stops, the record says interrupted and names
the signal, nothing measured is lost, and a sweep stops with exit 130 or 143.

Signals are real (os.kill), sent when a chosen training batch is drawn, so
they meet the handlers a user's Ctrl-C meets.
"""

import json
import os
import signal
from pathlib import Path

import pytest

from moebench.record import find_completed
from moebench.record import write_record as real_write_record
from moebench.run import run
from moebench.tasks.synthetic import SyntheticConfig, SyntheticTask

TINY = ("trainer.max_steps=6", "trainer.batch_tokens=256", "trainer.eval_batches=1",
        "trainer.eval_every=1000", "model.d_model=32", "model.d_ff=64")


@pytest.fixture
def send_at(monkeypatch):
    """``send_at(signum, n, split)``: send ``signum`` to this process as the n-th
    batch of ``split`` is drawn (counted over every phase of a run)."""
    real_get_batch = SyntheticTask.get_batch
    plan: dict[tuple[str, int], int] = {}
    drawn: dict[str, int] = {}

    def get_batch(self, split, batch_size, generator):
        drawn[split] = drawn.get(split, 0) + 1
        if (split, drawn[split]) in plan:
            os.kill(os.getpid(), plan[(split, drawn[split])])
        return real_get_batch(self, split, batch_size, generator)

    monkeypatch.setattr(SyntheticTask, "get_batch", get_batch)

    def send(signum: int, n: int, split: str = "train") -> dict[str, int]:
        plan[(split, n)] = signum
        return drawn

    # Ctrl-C as a terminal delivers it, to Python's KeyboardInterrupt handler: a
    # shell that starts the tests in the background leaves SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield send
    signal.signal(signal.SIGINT, previous)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_ctrl_c_in_the_oracle_baseline_interrupts_the_run(make_config, send_at):
    cfg = make_config(*TINY, "task.oracle_baseline=true")
    send_at(signal.SIGINT, 6 + 3)  # the oracle's third step
    record = read(run(cfg))
    assert record["status"] == "interrupted" and record["interrupted_by"] == "SIGINT"
    assert record["metrics"]["steps"] == 6 and record["metrics"]["oracle_steps"] == 2
    assert find_completed(cfg.results_dir, record["config_hash"]) is None  # resume redoes it


def test_ctrl_c_in_pretraining_interrupts_the_transfer_run(make_config, send_at):
    cfg = make_config(*TINY, "task.oracle_baseline=false", "transfer.pretrain_steps=6")
    cfg.transfer.pretrain_task = SyntheticConfig(name="synthetic", world_seed=1, oracle_baseline=False)
    drawn = send_at(signal.SIGINT, 3)
    record = read(run(cfg))
    assert record["status"] == "interrupted" and record["interrupted_by"] == "SIGINT"
    m = record["metrics"]
    assert m["pretrain_steps"] == 2 and m["steps"] == 0  # not fine-tuned, evaluated as it stands
    assert drawn["train"] == 3 and 0 <= m["quality"] <= 1


@pytest.fixture
def sigterm_guard():
    """Where moebench sets no handler, SIGTERM would end pytest: fail the test instead."""
    def not_handled(signum, frame):
        raise RuntimeError("SIGTERM reached the test's handler, not moebench's")

    previous = signal.signal(signal.SIGTERM, not_handled)
    yield not_handled
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_is_handled_like_ctrl_c(make_config, send_at, sigterm_guard):
    send_at(signal.SIGTERM, 4)
    record = read(run(make_config(*TINY, "task.oracle_baseline=false")))
    assert record["status"] == "interrupted" and record["interrupted_by"] == "SIGTERM"
    assert record["metrics"]["steps"] == 3
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard  # restored after the run


def test_a_second_ctrl_c_during_the_final_evaluation_keeps_the_record(make_config, send_at):
    cfg = make_config(*TINY, "task.oracle_baseline=false")
    send_at(signal.SIGINT, 4)
    send_at(signal.SIGINT, 1, split="val")  # the final evaluation's first batch
    try:
        record = read(run(cfg))
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C lost the run")
    assert record["status"] == "interrupted" and record["metrics"]["steps"] == 3
    assert 0 <= record["metrics"]["quality"] <= 1


def test_ctrl_c_while_the_record_is_written_stops_after_writing_it(make_config, monkeypatch):
    cfg = make_config(*TINY, "task.oracle_baseline=false")

    def write_record(record, results_dir):
        os.kill(os.getpid(), signal.SIGINT)
        return real_write_record(record, results_dir)

    monkeypatch.setattr("moebench.run.write_record", write_record)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    (path,) = Path(cfg.results_dir).glob("*.json")
    assert read(path)["status"] == "completed"  # it was: every step, every evaluation


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_sweep_with_exit_code_128_plus_its_number(
        tmp_path, send_at, sigterm_guard, exit_code_of, signum, code):
    send_at(signum, 3)
    assert exit_code_of("-m", "seed=0,1", *TINY, "task.oracle_baseline=false",
                        f"results_dir={tmp_path}/runs") == code
    (path,) = (tmp_path / "runs").glob("*.json")  # the second job never started
    record = read(path)
    assert record["status"] == "interrupted" and record["seed"] == 0
    assert record["interrupted_by"] == signal.Signals(signum).name
