import math

import torch

from moebench.metrics.balance import balance_metrics
from moebench.metrics.specialization import fixed_map_agreement, normalized_mutual_info


def test_even_load_is_perfectly_balanced():
    m = balance_metrics(torch.tensor([5, 5, 5, 5]))
    assert m == {"load_cv": 0.0, "load_max_over_mean": 1.0, "load_entropy": 1.0, "dead_experts": 0.0}


def test_collapsed_load():
    m = balance_metrics(torch.tensor([8, 0, 0, 0]))
    assert math.isclose(m["load_max_over_mean"], 4.0)
    assert math.isclose(m["load_cv"], math.sqrt(3))  # std of (4,-2,-2,-2)/2 = sqrt(12)/2
    assert m["load_entropy"] == 0.0
    assert m["dead_experts"] == 0.75


def test_nmi_extremes():
    a = torch.arange(1000) % 4
    assert math.isclose(normalized_mutual_info(a, (a + 1) % 4), 1.0)  # a relabelling
    g = torch.Generator().manual_seed(0)
    independent = torch.randint(0, 4, (100_000,), generator=g)
    assert normalized_mutual_info(a.repeat(100), independent) < 1e-3


def test_fixed_map_agreement():
    tokens = torch.tensor([0, 0, 0, 1, 1, 2])
    experts = torch.tensor([1, 1, 2, 0, 0, 3])
    assert math.isclose(fixed_map_agreement(tokens, experts), 5 / 6)
