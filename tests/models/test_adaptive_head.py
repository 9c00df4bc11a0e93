"""The adaptive softmax head (Grave et al. 2017) and adaptive input (Baevski &
Auli 2019): an exact distribution over the vocabulary, ids ranked by training
frequency, and FLOPs as executed (matched against torch.utils.flop_counter
within 2%, as tests/metrics/test_flops.py)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from moebench.metrics.flops import cost_metrics, linear_flops
from moebench.models.ffn import FFNFactory
from moebench.models.adaptive import AdaptiveHead, AdaptiveInput
from moebench.models.transformer import Transformer
from moebench.routers.base import DataStats, RouterContext

V, D = 97, 64
CUTOFFS = [10, 40]


def make_head() -> AdaptiveHead:
    torch.manual_seed(0)
    counts_V = torch.randint(1, 1000, (V,))
    return AdaptiveHead(D, counts_V, CUTOFFS, div_value=4.0)


def make_model(cfg) -> Transformer:
    torch.manual_seed(0)
    counts_V = torch.randint(1, 1000, (V,))
    adaptive = (AdaptiveInput(D, counts_V, CUTOFFS, 4.0), AdaptiveHead(D, counts_V, CUTOFFS, 4.0))
    ffn = FFNFactory(cfg.router, cfg.model, cfg.moe, DataStats())
    return Transformer(cfg.model, V, causal=True, ffn=ffn, adaptive=adaptive)


def test_adaptive_input_embeds_each_id_in_its_frequency_cluster():
    counts_V = torch.arange(V)  # id V - 1 is the most frequent
    embedding = AdaptiveInput(D, counts_V, CUTOFFS, div_value=4.0)
    assert [t.weight.shape for t in embedding.tables] == [(10, 64), (30, 16), (V - 40, 4)]
    idx_BL = torch.tensor([[V - 1, V - 11, 0]])  # ranks 0, 10 and V - 1: one per cluster
    expected_LD = torch.stack([embedding.projections[0](embedding.tables[0].weight[0]),
                               embedding.projections[1](embedding.tables[1].weight[0]),
                               embedding.projections[2](embedding.tables[2].weight[V - 41])])
    torch.testing.assert_close(embedding(idx_BL)[0], expected_LD)
    projections = linear_flops(64, D) + linear_flops(16, D) + linear_flops(4, D)
    assert embedding.flops_per_token() == pytest.approx(projections / 3)


def test_probabilities_sum_to_one_and_losses_are_minus_log_p_of_the_target():
    head = make_head()
    hidden_ND, targets_N = torch.randn(32, D), torch.randint(V, (32,))
    log_prob_NV = head.log_prob(hidden_ND)
    assert log_prob_NV.shape == (32, V)
    torch.testing.assert_close(log_prob_NV.exp().sum(-1), torch.ones(32))
    expected_N = -log_prob_NV.gather(1, targets_N[:, None]).squeeze(1)
    torch.testing.assert_close(head.token_losses(hidden_ND, targets_N), expected_N)
    assert torch.equal(head.predict(hidden_ND), log_prob_NV.argmax(-1))


def test_ids_are_ranked_by_training_frequency():
    counts_V = torch.arange(V)  # id V - 1 is the most frequent
    head = AdaptiveHead(D, counts_V, CUTOFFS, div_value=4.0)
    assert head.rank_of_id_V[V - 1] == 0 and head.id_of_rank_V[0] == V - 1
    in_head, in_last_tail = torch.tensor([V - 1]), torch.tensor([0])
    head_matmul = linear_flops(D, CUTOFFS[0] + 2)
    assert head.loss_flops(head.rank_of_id_V[in_head]) == head_matmul
    last_tail = linear_flops(D, D // 16) + linear_flops(D // 16, V - CUTOFFS[1])
    assert head.loss_flops(head.rank_of_id_V[in_last_tail]) == head_matmul + last_tail


@pytest.mark.parametrize("rows", ["all", "some"])  # some: a masked LM's counted positions
def test_flops_match_the_flop_counter(make_config, rows):
    cfg = make_config("router=top1", "model.d_model=64", "model.d_ff=128", "model.block_size=32")
    model = make_model(cfg).train()
    idx_BL, targets_BL = torch.randint(0, V, (4, 32)), torch.randint(0, V, (4, 32))
    chosen_T = torch.rand(4 * 32) < (1.0 if rows == "all" else 0.15)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(idx_BL, RouterContext())
        out.head.token_losses(out.hidden.flatten(0, 1)[chosen_T], targets_BL.flatten()[chosen_T])
    measured = counter.get_total_flops() / (4 * 32)  # per token of the forward
    analytic = cost_metrics(model, out.layer_stats, context=32)
    assert analytic["flops_per_token"] == pytest.approx(measured, rel=0.02)
    # The tail clusters ran on their rows only: far below a full softmax.
    assert 0 < analytic["flops_breakdown"]["head"] < linear_flops(D, V)
    assert 0 < analytic["flops_breakdown"]["embedding"] <= linear_flops(D, D)


def test_the_head_counts_only_the_work_since_the_last_forward(make_config):
    cfg = make_config("router=dense", "model.d_model=64", "model.block_size=32")
    model = make_model(cfg)
    out = model(torch.randint(0, V, (2, 32)), RouterContext())
    out.head.token_losses(out.hidden.flatten(0, 1), torch.zeros(64, dtype=torch.long))
    assert model.base_flops_per_token(32)["head"] > 0
    model(torch.randint(0, V, (2, 32)), RouterContext())  # no loss asked of it
    assert model.base_flops_per_token(32)["head"] == 0
