"""Hash layers: the expert is a fixed function of the input token id alone, and
every token reaches it (no capacity)."""

import pytest
import torch

from moebench.config import ModelConfig, MoEConfig
from moebench.errors import ConfigError
from moebench.routers.base import DataStats, RouterContext
from moebench.routers.hash import HashConfig, HashRouter, balanced_hash

V, E = 50, 8


def route(router: HashRouter, x_TD: torch.Tensor, token_ids_T: torch.Tensor) -> torch.Tensor:
    out = router(x_TD, RouterContext(token_ids_T=token_ids_T))
    assert out.routing.token_idx_A.tolist() == list(range(len(token_ids_T)))
    return out.routing.expert_idx_A


def test_same_token_id_same_expert_whatever_its_context():
    torch.manual_seed(0)
    router = HashRouter(HashConfig(name="hash"), 16, E, DataStats(vocab_size=V))
    ids_T = torch.randint(V, (400,))
    experts_T = route(router, torch.randn(400, 16), ids_T)
    # Other hidden states, other positions: the same expert for every occurrence of an id.
    perm = torch.randperm(400)
    assert torch.equal(route(router, torch.randn(400, 16), ids_T[perm]), experts_T[perm])
    assert torch.equal(experts_T, router.expert_V[ids_T])


def test_the_map_is_fixed_by_the_seed():
    maps = [HashRouter(HashConfig(name="hash", hash_seed=s), 16, E, DataStats(vocab_size=V)).expert_V
            for s in (0, 0, 1)]
    assert torch.equal(maps[0], maps[1]) and not torch.equal(maps[0], maps[2])


def test_no_gate_no_parameters_no_losses():
    router = HashRouter(HashConfig(name="hash", z_loss_coef=1.0), 16, E, DataStats(vocab_size=V))
    out = router(torch.randn(10, 16), RouterContext(token_ids_T=torch.arange(10)))
    assert list(router.parameters()) == [] and out.aux_losses == {} and out.logits_TE is None
    assert torch.all(out.routing.weight_A == 1)
    assert router.flops_per_token() == {}


def test_balanced_hash_loads_are_near_even_on_a_skewed_table():
    counts_V = torch.arange(1, 5001).float() ** -0.7  # Zipf-like; the top id has 2.3% of the mass
    counts_V = counts_V[torch.randperm(5000, generator=torch.Generator().manual_seed(0))]
    load_E = torch.zeros(E).index_add(0, balanced_hash(counts_V, E), counts_V)
    # Greedy largest-first: loads differ by at most the largest single count (Graham 1969).
    assert load_E.max() - load_E.min() <= counts_V.max()
    assert load_E.max() / load_E.mean() < 1.001
    random_E = torch.zeros(E).index_add(0, torch.randint(E, (5000,)), counts_V)
    assert random_E.max() / random_E.mean() > 1.05  # what balancing is for

    # Through the router: tokens drawn with those frequencies spread evenly.
    router = HashRouter(HashConfig(name="hash", balanced=True), 16, E, DataStats(5000, counts_V))
    ids_T = torch.multinomial(counts_V, 50_000, replacement=True)
    tokens_E = torch.bincount(route(router, torch.zeros(50_000, 16), ids_T), minlength=E).float()
    assert tokens_E.std() / tokens_E.mean() < 0.05


def test_dropless_by_default_as_the_paper_every_token_reaches_its_hashed_expert(make_config):
    # Roller et al. 2021 route every token to its hashed expert; a frequent id's
    # tokens all land on one expert, so a capacity would drop them at every step.
    torch.manual_seed(0)
    model = ModelConfig(name="test", d_model=16, d_ff=32)
    ids_T = torch.cat([torch.zeros(300, dtype=torch.long), torch.randint(V, (100,))])  # a frequent id
    x_TD, ctx = torch.randn(400, 16), RouterContext(token_ids_T=ids_T)
    layer = HashRouter.build_layer(HashConfig(name="hash"), model, MoEConfig(num_experts=E), DataStats(V))
    _, stats = layer.train()(x_TD, ctx)  # moe.capacity_factor 1.25, moe.dropless false
    assert stats.dropped == 0 and torch.all(stats.experts_per_token_T == 1)
    capped = HashRouter.build_layer(HashConfig(name="hash", dropless=False), model,
                                    MoEConfig(num_experts=E), DataStats(V))
    assert capped.train()(x_TD, ctx)[1].dropped > 200  # capacity ceil(1.25 * 400 / 8) = 63
    assert make_config("router=hash").router.dropless  # the record's config says so


def test_routing_without_token_ids_fails_in_one_line():
    router = HashRouter(HashConfig(name="hash"), 16, E, DataStats(vocab_size=V))
    with pytest.raises(ConfigError, match="token_ids="):
        router.route(torch.randn(4, 16), RouterContext(step=0))
