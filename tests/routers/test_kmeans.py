"""k-means routing: nearest centroid, EMA toward the tokens' mean, no gradient
through the choice, and the optional bias that evens the load."""

import torch
import torch.nn.functional as F

from moebench.moe.block import MoEBlock
from moebench.moe.experts import Experts, expert_ffn_torch
from moebench.routers.base import RouterContext
from moebench.routers.kmeans import KMeansConfig, KMeansRouter, ema_centroids, nearest_centroid


def make_router(E: int = 4, D: int = 8, **cfg) -> KMeansRouter:
    return KMeansRouter(KMeansConfig(name="kmeans", **cfg), D, E, data=None)


def test_assignment_is_the_nearest_centroid_on_the_sphere():
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(100, 8, generator=g)
    centroids = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    expert = nearest_centroid(x, centroids, torch.zeros(5))
    distances = torch.cdist(F.normalize(x, dim=-1), centroids)  # Euclidean, between unit vectors
    assert torch.equal(expert, distances.argmin(-1))


def test_ema_moves_each_centroid_toward_its_tokens_mean():
    g = torch.Generator().manual_seed(0)
    centroids = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    x = torch.randn(30, 8, generator=g)
    expert = torch.arange(30) % 2  # centroid 2 gets no token
    moved = ema_centroids(centroids, *unit_sums(x, expert, 3), decay=0.9)
    for e in (0, 1):
        mean = F.normalize(x[expert == e], dim=-1).mean(0)
        torch.testing.assert_close(moved[e], F.normalize(0.9 * centroids[e] + 0.1 * mean, dim=0))
        assert F.cosine_similarity(moved[e], mean, dim=0) > F.cosine_similarity(centroids[e], mean, dim=0)
    assert torch.equal(moved[2], centroids[2])


def unit_sums(x: torch.Tensor, expert: torch.Tensor, E: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each centroid's unit tokens summed, and their number."""
    sums = torch.zeros(E, x.shape[1]).index_add_(0, expert, F.normalize(x, dim=-1))
    return sums, torch.bincount(expert, minlength=E).float()


def alone(t: torch.Tensor) -> torch.Tensor:
    return t  # sum_over_ranks on one process


def test_training_forward_starts_at_tokens_and_the_step_applies_the_ema():
    torch.manual_seed(0)
    router = make_router(E=4, ema_decay=0.5).train()
    x = torch.randn(16, 8)
    router(x, RouterContext())
    assert bool(router.initialized)
    router.finish_step(alone)
    before = router.centroids_ED.clone()
    expert = router(x, RouterContext()).routing.expert_idx_A
    assert torch.equal(expert, nearest_centroid(x, before, router.bias_E))
    assert torch.equal(router.centroids_ED, before)  # not before the step finishes
    router.finish_step(alone)
    torch.testing.assert_close(router.centroids_ED, ema_centroids(before, *unit_sums(x, expert, 4), 0.5))
    moved = router.centroids_ED.clone()
    router.eval()(x, RouterContext())
    router.finish_step(alone)  # evaluation gathers nothing
    assert torch.equal(router.centroids_ED, moved)


def test_a_step_of_micro_batches_moves_the_centroids_as_one_batch():
    """Micro-batches (or expert-parallel processes) add their tokens up:
    one EMA step by the whole batch's means."""
    torch.manual_seed(0)
    whole, parts = make_router(E=4, ema_decay=0.5, balanced=True), make_router(E=4, ema_decay=0.5, balanced=True)
    x = torch.randn(32, 8)
    for router in (whole, parts):
        router.centroids_ED.copy_(F.normalize(x[:4], dim=-1))
        router.initialized.fill_(True)
    whole(x, RouterContext())
    parts(x[:16], RouterContext())
    parts(x[16:], RouterContext())
    whole.finish_step(alone)
    parts.finish_step(alone)
    torch.testing.assert_close(parts.centroids_ED, whole.centroids_ED)
    assert torch.equal(parts.bias_E, whole.bias_E) and bool(whole.bias_E.abs().sum() > 0)


def test_no_gradient_flows_through_the_choice():
    torch.manual_seed(0)
    E, D = 4, 8
    router = make_router(E, D)
    assert list(router.parameters()) == []  # centroids are buffers, moved only by the EMA
    block = MoEBlock(router, Experts(E, D, 16, "gelu"), k=1, capacity_factor=4.0,
                     eval_capacity_factor=4.0, dropless=True, drop_policy="position")
    x = torch.randn(32, D, requires_grad=True)
    y, _ = block(x, RouterContext())
    y.square().sum().backward()

    # The same gradient as the experts' with the assignment held fixed.
    expert = nearest_centroid(x.detach(), router.centroids_ED, router.bias_E)
    order = torch.argsort(expert, stable=True)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = expert_ffn_torch(x_ref, block.experts.w_in_EDH, block.experts.w_out_EFD, order,
                             torch.bincount(expert, minlength=E), torch.ones(32), "gelu")
    y_ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert router(x, RouterContext()).routing.weight_A.grad_fn is None


def test_balanced_bias_evens_the_load_of_a_skewed_stream():
    E, D = 4, 8
    directions_ED = torch.eye(E, D)
    share_E = torch.tensor([0.85, 0.05, 0.05, 0.05])  # one cluster holds most tokens

    def max_over_mean_after_training(router):
        g = torch.Generator().manual_seed(0)  # the same stream for both routers

        def batch():
            cluster_T = torch.multinomial(share_E, 256, replacement=True, generator=g)
            return directions_ED[cluster_T] + 0.3 * torch.randn(256, D, generator=g)

        router.centroids_ED.copy_(directions_ED)  # start at the true clusters
        router.initialized.fill_(True)
        for _ in range(300):
            router(batch(), RouterContext())
            router.finish_step(alone)
        router.eval()
        load = sum(torch.bincount(router(batch(), RouterContext()).routing.expert_idx_A, minlength=E)
                   for _ in range(10)).float()
        return float(load.max() / load.mean())

    plain = max_over_mean_after_training(make_router(E, D, ema_decay=0.9).train())
    balanced = max_over_mean_after_training(
        make_router(E, D, ema_decay=0.9, balanced=True, bias_rate=0.005).train())
    assert plain > 3.0 and balanced < 1.3
