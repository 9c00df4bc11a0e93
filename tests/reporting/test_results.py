"""The loader: bad files are skipped by path with a reason, seeds of different
settings never pool, and the long frames hold what the records hold."""

import json

from moebench.record import SCHEMA_VERSION
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
