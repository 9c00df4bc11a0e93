"""Where a record cannot be written, the run fails before training, not after;
a write that fails at the end anyway keeps the record where the message says."""

import errno
import json
import os

import pytest

from moebench.errors import ConfigError
from moebench.record import write_record as real_write_record
from moebench.run import run
from moebench.tasks.synthetic import SyntheticTask

TINY = ("trainer.max_steps=4", "trainer.batch_tokens=256", "trainer.eval_batches=1",
        "trainer.eval_every=1000", "model.d_model=32", "model.d_ff=64", "task.oracle_baseline=false")


@pytest.fixture
def train_batches(monkeypatch):
    """The number of training batches drawn so far, as a one-item list."""
    real_get_batch = SyntheticTask.get_batch
    drawn = [0]

    def get_batch(self, split, batch_size, generator):
        drawn[0] += split == "train"
        return real_get_batch(self, split, batch_size, generator)

    monkeypatch.setattr(SyntheticTask, "get_batch", get_batch)
    return drawn


def test_results_dir_that_is_a_file_fails_before_training(tmp_path, train_batches, exit_code_of,
                                                          capsys):
    (tmp_path / "runs").write_text("not a folder")
    assert exit_code_of(*TINY, f"results_dir={tmp_path}/runs") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moebench: error: results_dir=")
    assert "a writable directory" in lines[0]
    assert train_batches[0] == 0


def test_read_only_results_dir_fails_before_training(make_config, tmp_path, train_batches):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs").chmod(0o555)
    if os.access(tmp_path / "runs", os.W_OK):
        pytest.skip("this user (root) writes to read-only folders")
    with pytest.raises(ConfigError, match="results_dir"):
        run(make_config(*TINY))
    assert train_batches[0] == 0


def test_full_disk_fails_before_training(make_config, monkeypatch, train_batches):
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(ConfigError, match="results_dir.*No space left on device"):
        run(make_config(*TINY))
    assert train_batches[0] == 0


def test_a_record_that_cannot_be_written_at_the_end_is_kept_elsewhere(tmp_path, monkeypatch,
                                                                      exit_code_of, capsys):
    runs = tmp_path / "runs"

    def write_record(record, results_dir):  # the disk fills up during training
        if str(results_dir) == str(runs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_record(record, results_dir)

    monkeypatch.setattr("moebench.run.write_record", write_record)
    assert exit_code_of(*TINY, f"results_dir={runs}", f"data.cache_dir={tmp_path}/cache") == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    (kept,) = (tmp_path / "cache").rglob("*.json")
    assert str(runs) in message and "No space left on device" in message and str(kept) in message
    assert json.loads(kept.read_text())["status"] == "completed"


@pytest.mark.parametrize("override", ["moe.eval_capacity_factor=inf", "moe.capacity_factor=inf"])
def test_non_finite_capacity_factors_are_refused(make_config, override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        make_config(override)
