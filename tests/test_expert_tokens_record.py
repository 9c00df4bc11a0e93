"""What each expert learned, in the record: each layer's expert_tokens, and
each curve point's expert_agreement with the previous evaluation."""

import json

import pytest
import torch

from moebench.metrics.expert_tokens import MIN_COUNT
from moebench.run import run
from moebench.train import curve_point

SHORT = ("trainer.batch_tokens=256", "trainer.eval_batches=4", "task.oracle_baseline=false")


def test_a_run_records_each_experts_tokens_and_the_agreement_of_its_evaluations(make_config):
    record = json.loads(run(make_config(*SHORT, "trainer.max_steps=6", "trainer.eval_points=3")).read_text())
    agreements = [p["expert_agreement"] for p in record["curves"]]
    assert agreements[0] is None and all(0 <= a <= 1 for a in agreements[1:])
    assert "modal_experts" not in record["metrics"]
    for layer in record["metrics"]["per_layer"]:
        assert len(layer["expert_tokens"]) == len(layer["load_E"])
        listed = [entry for tops in layer["expert_tokens"] for entry in tops]
        assert listed and all(count >= MIN_COUNT and lift > 1 for _, count, lift in listed)


def test_curve_points_compare_modal_experts_with_the_previous_evaluation():
    counts_V = torch.tensor([1, 3])
    first = {"loss": 1.0, "modal_experts": (torch.tensor([[0, 1]]), counts_V)}
    later = {"loss": 0.9, "modal_experts": (torch.tensor([[0, 0]]), counts_V)}
    assert curve_point(1, 1.0, first, 10, None)["expert_agreement"] is None
    point = curve_point(2, 1.0, later, 20, None, first["modal_experts"])
    assert point["expert_agreement"] == pytest.approx(1 / 4) and "modal_experts" not in point
    assert "expert_agreement" not in curve_point(2, 1.0, {"loss": 0.9}, 20, None)  # no token ids


def test_a_model_without_moe_layers_records_no_agreement(make_config):
    record = json.loads(run(make_config(*SHORT, "router=dense", "trainer.max_steps=2",
                                        "trainer.eval_points=2")).read_text())
    assert all("expert_agreement" not in p for p in record["curves"])
