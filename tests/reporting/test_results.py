"""The loader: bad files are skipped by path with a reason, seeds of different
settings never pool, and the long frames hold what the records hold."""

import json
import math
import os
import threading

import pytest

from moebench.record import SCHEMA_VERSION
from moebench.reporting.ranking import summarize
from moebench.results import load_results, setup_names, validate


def test_bad_files_are_reported_by_path_and_skipped(results_dir, make_record):
    good = make_record()
    root = results_dir(good)
    runs = root / "runs"
    (runs / "truncated.json").write_text(json.dumps(make_record(seed=1))[:200])
    (runs / "future.json").write_text(json.dumps({**make_record(seed=2), "schema_version": 99}))
    (runs / "no_quality.json").write_text(json.dumps(
        {**make_record(seed=3), "metrics": {"quality_metric": "accuracy", "higher_is_better": True}}))
    (runs / "z_copy.json").write_text(json.dumps(good))  # the same run twice would count a seed twice
    (runs / "bad_loads.json").write_text(json.dumps(make_record(seed=4, per_layer=[{"load_E": ["x"]}])))
    for other in ("bench", "baselines"):  # other JSON that lives under results/
        (root / other).mkdir()
        (root / other / "cpu.json").write_text("{}")

    results = load_results(root)

    assert list(results.runs["run_id"]) == [good["run_id"]]
    reasons = dict(results.skipped)
    assert sorted(reasons) == ["runs/bad_loads.json", "runs/future.json",
                               "runs/no_quality.json", "runs/truncated.json", "runs/z_copy.json"]
    assert "schema version 99" in reasons["runs/future.json"]
    assert "metrics.quality" in reasons["runs/no_quality.json"]
    assert "duplicate run_id" in reasons["runs/z_copy.json"]
    assert "load_E" in reasons["runs/bad_loads.json"]


def test_validate_accepts_the_record_a_real_run_writes(make_config):
    from moebench.run import run

    cfg = make_config("trainer.max_steps=2", "trainer.batch_tokens=64", "trainer.eval_batches=1",
                      "task.oracle_baseline=false")
    record = json.loads(run(cfg).read_text())
    assert validate(record)["schema_version"] == SCHEMA_VERSION
    results = load_results(cfg.results_dir)
    assert results.skipped == () and len(results.runs) == 1
    assert not results.loads.empty and not results.clusters.empty  # the lead's per-layer details


def test_setups_split_on_differing_config_and_show_dense_variants(make_record):
    records = [
        make_record("top1", seed=0), make_record("top1", seed=1),
        make_record("top1", config={"moe": {"capacity_factor": 2.0}}),
        make_record("dense", config={"router": {"name": "dense", "k": 1, "params": "active"}}),
        make_record("dense", config={"router": {"name": "dense", "k": 1, "params": "total"}}),
        make_record("top1", task="shakespeare_char"),  # other task: its own comparison
    ]
    # 1.25 is the synthetic task's most common capacity factor: only 2.0 is named.
    assert setup_names(records) == [
        "top1", "top1", "top1 (moe.capacity_factor=2.0)", "dense (active)", "dense (total)",
        "top1",
    ]


def test_keys_that_do_not_change_results_and_keys_older_records_lack_do_not_split(make_record):
    records = [make_record(seed=0, config={"results_dir": "/a", "trainer": {"log_every_s": 9.0}}),
               make_record(seed=1, config={"moe": {"routing_groups": "all"}})]  # a key added later
    assert setup_names(records) == ["top1", "top1"]


def test_long_frames_hold_per_expert_position_and_cluster_details(results_dir, make_record):
    record = make_record(per_layer=[{"load_E": [1.0, 3.0]}, {"load_E": [2.0, 2.0],
                                                             "cluster_expert": [[5, 0], [1, 4]]}],
                         drop_rate_by_position=[0.0, 0.5, 1.0])
    results = load_results(results_dir(record, make_record(seed=1)))
    assert results.loads[["layer", "expert", "load"]].values.tolist() == [
        [0, 0, 1.0], [0, 1, 3.0], [1, 0, 2.0], [1, 1, 2.0]]
    assert results.clusters[["cluster", "expert", "count"]].values.tolist() == [
        [0, 0, 5.0], [0, 1, 0.0], [1, 0, 1.0], [1, 1, 4.0]]
    assert results.positions["drop_rate"].tolist() == [0.0, 0.5, 1.0]
    assert set(results.curves["run_id"]) == set(results.runs["run_id"])
    assert results.runs.loc[0, "config.moe.capacity_factor"] == 1.25

    picked = results.where(results.runs["seed"] == 1)
    assert len(picked.runs) == 1 and picked.loads.empty and len(picked.curves) == 2


def write_raw(root, name, record):
    """``record`` as ``root/runs/name`` whatever its fields; json.dumps writes
    NaN and Infinity bare, as older records hold them."""
    (root / "runs").mkdir(parents=True, exist_ok=True)
    (root / "runs" / name).write_text(json.dumps(record))


def with_quality(record, quality):
    return {**record, "metrics": {**record["metrics"], "quality": quality}}


@pytest.mark.parametrize("key, name", [("task", "a/b"), ("task", "../../x"), ("task", "/tmp/x"),
                                       ("task", ""), ("task", "Shakespeare"), ("router", "top1\n")])
def test_a_task_or_router_that_is_not_a_name_is_skipped(results_dir, make_record, key, name):
    root = results_dir(make_record())
    write_raw(root, "bad.json", {**make_record(seed=1), key: name})
    results = load_results(root)
    assert len(results.runs) == 1
    assert dict(results.skipped)["runs/bad.json"].startswith(f"{key} {name!r} is not a name")


def test_json_nested_too_deeply_is_skipped(results_dir, make_record):
    root = results_dir(make_record())
    (root / "runs" / "deep.json").write_text("[" * 200_000 + "]" * 200_000)  # beyond the parser
    # within the parser's reach, but deeper than any record
    deep = json.dumps(make_record(seed=1, config={"x": "DEEP"})).replace('"DEEP"', '{"x": ' * 100 + "1" + "}" * 100)
    (root / "runs" / "deep_config.json").write_text(deep)
    results = load_results(root)
    assert len(results.runs) == 1
    assert dict(results.skipped) == {"runs/deep.json": "nested too deeply to parse",
                                     "runs/deep_config.json": "nested deeper than 32 levels"}


def test_a_fifo_named_like_a_record_is_skipped_unopened(results_dir, make_record):
    root = results_dir(make_record())
    fifo = root / "runs" / "x.json"
    os.mkfifo(fifo)
    # Should the loader open the FIFO, this writer answers it "{}": the test then
    # fails on the reason instead of hanging.
    writer = threading.Thread(target=fifo.write_text, args=("{}",), daemon=True)
    writer.start()
    try:
        results = load_results(root)
    finally:
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer finish
        writer.join()
        os.close(reader)
    assert len(results.runs) == 1
    assert dict(results.skipped) == {"runs/x.json": "not a regular file"}


@pytest.mark.parametrize("quality", [math.inf, -math.inf, math.nan, None])
def test_a_completed_run_without_a_finite_quality_is_skipped(results_dir, make_record, quality):
    root = results_dir(make_record(seed=0), make_record(seed=1, quality=0.7))
    write_raw(root, "bad.json", with_quality(make_record(seed=2), quality))
    results = load_results(root)
    assert sorted(results.runs["seed"]) == [0, 1]  # neither ranked first nor counted as a seed
    assert "metrics.quality is" in dict(results.skipped)["runs/bad.json"]
    assert summarize(results.runs)["seeds"].tolist() == [2]


@pytest.mark.parametrize("quality", [math.inf, math.nan, None])
def test_a_diverged_run_may_lack_its_quality(results_dir, make_record, quality):
    root = results_dir(make_record())
    write_raw(root, "diverged.json", with_quality(make_record(seed=1, status="diverged"), quality))
    results = load_results(root)
    assert results.skipped == ()
    diverged = results.runs.set_index("status").loc["diverged"]
    assert math.isnan(diverged["quality"])


@pytest.mark.parametrize("missing", [math.nan, None])  # older records: bare NaN; newer: null
def test_missing_numbers_read_as_nan_whether_nan_or_null(results_dir, make_record, missing):
    root = results_dir(make_record(seed=1))
    write_raw(root, "run.json", make_record(drop_rate=missing, drop_rate_by_position=[0.5, missing],
                                            per_layer=[{"load_E": [1.0, missing],
                                                        "cluster_expert": [[1, missing]]}]))
    results = load_results(root)
    assert results.skipped == ()
    assert [math.isnan(v) for v in results.runs["drop_rate"]] == [True, False]  # seeds 0, 1
    assert [math.isnan(v) for v in results.positions["drop_rate"]] == [False, True]
    assert [math.isnan(v) for v in results.loads["load"]] == [False, True]
    assert [math.isnan(v) for v in results.clusters["count"]] == [False, True]


def test_records_of_another_quality_metric_than_their_tasks_are_skipped(results_dir, make_record):
    root = results_dir(make_record(seed=0), make_record(seed=1))
    write_raw(root, "loss.json", make_record(seed=2, quality=2.5, quality_metric="val_loss",
                                             higher_is_better=False))
    results = load_results(root)
    assert sorted(results.runs["seed"]) == [0, 1]
    assert dict(results.skipped) == {"runs/loss.json": "quality metric 'val_loss' (lower is better), "
                                     "where 2 other synthetic record(s) have 'accuracy' (higher is better)"}


def test_a_run_completed_twice_counts_once(results_dir, make_record):
    """One run rerun under another resume key (or another results_dir) must
    not count as two seeds; an interrupted record beside its rerun is kept."""
    first = make_record(seed=0, quality=0.8)
    rerun = {**make_record(seed=0, quality=0.9, config={"results_dir": "elsewhere"}), "run_id": "z-rerun"}
    stopped = make_record(seed=0, quality=0.5, status="interrupted")
    other_seed = make_record(seed=1, quality=0.7)
    results = load_results(results_dir(first, rerun, stopped, other_seed))
    completed = results.runs[results.runs["status"] == "completed"]
    assert sorted(completed["seed"]) == [0, 1]
    assert len(results.runs) == 3
    (path, reason), = results.skipped
    assert path == "runs/z-rerun.json" and "completed twice" in reason
