"""The synthetic task: a fixed world per world_seed, labels from the cluster's teacher."""

import pytest
import torch

from moebench.config import DataConfig
from moebench.errors import ConfigError
from moebench.routers.base import RouterContext
from moebench.routers.oracle import OracleConfig, OracleRouter
from moebench.tasks.synthetic import SyntheticConfig, SyntheticTask


def task(**kw) -> SyntheticTask:
    return SyntheticTask(SyntheticConfig(name="synthetic", **kw), DataConfig(root=None), seed=0)


def batch(t: SyntheticTask, seed: int = 0, n: int = 512):
    return t.get_batch("train", n, torch.Generator().manual_seed(seed))


def test_world_depends_on_world_seed_only():
    a, b, c = task(), SyntheticTask(SyntheticConfig(name="synthetic"), DataConfig(root=None), seed=9), task(world_seed=1)
    assert torch.equal(a.point_VI, b.point_VI) and torch.equal(a.teacher_in_KIH, b.teacher_in_KIH)
    assert not torch.equal(a.point_VI, c.point_VI)
    assert torch.equal(batch(a).targets, batch(b).targets)  # same sampling seed, same batch


def test_clusters_follow_token_types_and_labels_follow_the_cluster_teacher():
    t = task()
    b = batch(t)
    assert torch.equal(b.cluster_ids, t.cluster_V[b.token_ids])
    assert torch.equal(b.targets, t.teacher_labels(b.inputs, b.cluster_ids))
    # The teacher matters: the same inputs under other clusters' teachers get other labels.
    shifted = t.teacher_labels(b.inputs, (b.cluster_ids + 1) % t.cfg.num_clusters)
    assert (shifted != b.targets).float().mean() > 0.5
    assert b.targets.unique().numel() > t.cfg.num_classes // 2


def test_oracle_routes_by_cluster_and_refuses_tasks_without_clusters():
    router = OracleRouter(OracleConfig(), 32, 8, data=None)
    clusters = torch.tensor([0, 3, 9, 15])
    out = router(torch.randn(4, 32), RouterContext(cluster_ids_T=clusters))
    assert out.routing.expert_idx_A.tolist() == [0, 3, 1, 7]
    assert list(router.parameters()) == [] and router.flops_per_token() == {}
    with pytest.raises(ConfigError, match="router.name"):
        router(torch.randn(4, 32), RouterContext())


def test_hash_routing_does_not_know_the_clusters():
    from moebench.routers.hash import random_hash
    from moebench.metrics.specialization import normalized_mutual_info

    t = task()
    expert_V = random_hash(t.cfg.vocab_size, t.cfg.num_clusters, seed=0)
    assert normalized_mutual_info(expert_V, t.cluster_V) < 0.1
