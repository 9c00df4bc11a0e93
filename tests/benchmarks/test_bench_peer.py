"""moebench.commands.bench_peer at a toy shape: one training step per repeat, its parts,
the ratio to the smallest pool, and a record it writes."""

import json
import sys

from moebench.commands import bench_peer


def test_bench_peer_times_the_training_step_by_pool_size(tmp_path, monkeypatch):
    out = tmp_path / "peer.json"
    monkeypatch.setattr(sys, "argv", ["bench_peer", "--experts", "256", "1024", "--tokens", "32",
                                      "--d-model", "16", "--heads", "2", "--experts-per-head", "4",
                                      "--d-key", "8", "--repeats", "2", "--out", str(out)])
    bench_peer.main()
    results = json.loads(out.read_text())["results"]
    assert [r["num_experts"] for r in results] == [256, 1024]
    for r in results:
        assert all(r[k] > 0 for k in ("forward_ms", "backward_ms", "optimizer_ms", "train_step_ms",
                                      "train_flops_per_s"))
    assert results[0]["train_step_ratio"] == 1.0 and results[1]["train_step_ratio"] > 0
