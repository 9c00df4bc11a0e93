"""The built-in synthetic task: a right answer to "which tokens belong together".

A fixed world, drawn from ``task.world_seed``: ``vocab_size`` token types,
each in one of ``num_clusters`` latent clusters; a type's point is its
cluster's centre plus a fixed offset. A sample is a type (Zipf-distributed,
so some types are frequent, as in text) plus fresh noise. Each cluster has
its own random teacher network, and the label is the argmax of the teacher
of the sample's cluster. A model that sends each cluster to its own expert
has an easier job than one that mixes them, and the oracle router (routing
by the true cluster) shows how easy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moebench.config import DataConfig, ModelConfig
from moebench.models.ffn import FFNFactory
from moebench.models.mlp import TokenMLP
from moebench.routers.base import DataStats
from moebench.tasks import TASKS
from moebench.tasks.base import Batch, Task, TaskConfig


@dataclass
class SyntheticConfig(TaskConfig):
    world_seed: int = 0  # fixes the world; the run seed only drives sampling and init
    num_clusters: int = 8
    vocab_size: int = 512
    d_in: int = 32
    num_classes: int = 16
    teacher_width: int = 64
    centre_scale: float = 2.0  # distance between clusters, in units of the type spread
    noise: float = 0.3  # per-sample noise around a type's point
    zipf_exponent: float = 1.0
    # Also train the same model with the oracle router and report its quality.
    oracle_baseline: bool = True


# The world's generator is seeded apart from every other seeded draw in the
# suite: hash routing's map is torch.randint(E, (V,)) from a generator seeded
# hash_seed = 0, exactly the cluster draw below when seeded world_seed = 0,
# which made hash routing the oracle.
WORLD_SEED_OFFSET = 0x5EED_0000


@TASKS.register("synthetic", SyntheticConfig)
class SyntheticTask(Task):
    quality_metric = "accuracy"
    higher_is_better = True
    tokens_per_example = 1

    def __init__(self, cfg: SyntheticConfig, data: DataConfig, seed: int) -> None:
        super().__init__(cfg, data, seed)
        g = torch.Generator().manual_seed(WORLD_SEED_OFFSET + cfg.world_seed)
        K, V, I = cfg.num_clusters, cfg.vocab_size, cfg.d_in
        self.cluster_V = torch.randint(K, (V,), generator=g)
        centres_KI = cfg.centre_scale * torch.randn(K, I, generator=g)
        self.point_VI = centres_KI[self.cluster_V] + torch.randn(V, I, generator=g)
        rank_V = torch.randperm(V, generator=g).float()
        self.type_probs_V = (rank_V + 1) ** -cfg.zipf_exponent
        self.teacher_in_KIH = torch.randn(K, I, cfg.teacher_width, generator=g) / I**0.5
        self.teacher_out_KHC = torch.randn(K, cfg.teacher_width, cfg.num_classes, generator=g)

    def build_model(self, model_cfg: ModelConfig, ffn: FFNFactory) -> nn.Module:
        return TokenMLP(model_cfg, self.cfg.d_in, self.cfg.num_classes, ffn)

    def data_stats(self) -> DataStats:
        return DataStats(self.cfg.vocab_size, self.type_probs_V / self.type_probs_V.sum())

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch:
        type_B = torch.multinomial(self.type_probs_V, batch_size, replacement=True, generator=generator)
        x_BI = self.point_VI[type_B] + self.cfg.noise * torch.randn(
            batch_size, self.cfg.d_in, generator=generator
        )
        cluster_B = self.cluster_V[type_B]
        return Batch(x_BI, self.teacher_labels(x_BI, cluster_B), token_ids=type_B, cluster_ids=cluster_B)

    def teacher_labels(self, x_BI: Tensor, cluster_B: Tensor) -> Tensor:
        hidden_BH = torch.tanh(torch.einsum("bi,bih->bh", x_BI, self.teacher_in_KIH[cluster_B]))
        return torch.einsum("bh,bhc->bc", hidden_BH, self.teacher_out_KHC[cluster_B]).argmax(-1)

    def quality(self, val_loss: float, val_accuracy: float) -> float:
        return val_accuracy
