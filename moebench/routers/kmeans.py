"""k-means routing: each token goes to the nearest of E centroids.

Online spherical k-means on the layer's input, as the Routing Transformer
clusters queries and keys (Roy et al. 2021, arXiv:2003.05997, section 4):
tokens and centroids are unit vectors, a token's expert is the centroid of
largest cosine similarity, and each centroid follows its tokens by an
exponential moving average,
    c_e <- normalize(lambda c_e + (1 - lambda) mean_{t -> e} x_t / |x_t|).
(The paper sums its tokens; the mean keeps lambda's meaning whatever the
batch size.) Nothing is learned by gradient: the choice is an argmax over
fixed centroids and the combine weight is 1, as in hash routing (Roller et
al. 2021), so this router answers how far routing by the geometry of the
layer's input gets without a learned gate.

Evaluation: the nearest centroid without capacity (``eval_dropless``), the
rule of every router that routes each token by its own scores at test time
(see routers/base_layers.py): a centroid that draws many tokens shows in the
load (``load_cv``), not as dropped tokens; ``eval_dropless: false`` applies
``moe.eval_capacity_factor``.

Centroids start at E tokens of the first training batch, k-means' usual
initialization from the data (Forgy 1965), so none starts far from all tokens.
They move once per training step, by the means of the step's tokens (all of
its micro-batches, and under expert parallelism every process's shard:
:meth:`~moebench.routers.base.Router.finish_step`); under expert parallelism
every process starts from rank 0's picks, drawn from the first shard as one
process draws them from the first micro-batch.

``balanced``: a per-centroid bias on the similarities, moved after each step
by DeepSeek-V3's loss-free rule (b_e += gamma sign(mean load - load_e),
:func:`~moebench.routers.deepseek_moe.loss_free_bias_update`). It uses past
loads only, so a token's expert never depends on the other tokens of its
batch, as a Sinkhorn or capacity-balanced assignment's would (a leak on
causal tasks; see moe/grouping.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from moebench.errors import ConfigError
from moebench.metrics.flops import linear_flops
from moebench.routers import ROUTERS
from moebench.routers.base import (
    DataStats, Router, RouterConfig, RouterContext, RouterOutput, float32_gate, one_expert_each,
)
from moebench.routers.deepseek_moe import loss_free_bias_update


@dataclass
class KMeansConfig(RouterConfig):
    ema_decay: float = 0.99  # lambda; the Routing Transformer's 0.999 suits far longer runs
    balanced: bool = False
    bias_rate: float = 1e-3  # gamma of the balancing bias, on similarities in [-1, 1]
    # Evaluation: nearest centroid without capacity; false applies moe.eval_capacity_factor.
    eval_dropless: bool = True

    def __post_init__(self) -> None:
        if self.k != 1:
            raise ConfigError("router.k", self.k, "1 (a token goes to its nearest centroid)")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError("router.ema_decay", self.ema_decay, "0 <= ema_decay < 1")
        if self.bias_rate < 0:
            raise ConfigError("router.bias_rate", self.bias_rate, "a number >= 0")


def nearest_centroid(x_TD: Tensor, centroids_ED: Tensor, bias_E: Tensor) -> Tensor:
    """``expert_T``: the unit centroid of largest cosine similarity (+ bias) to each token."""
    return (float32_gate(F.normalize(x_TD.float(), dim=-1), centroids_ED) + bias_E).argmax(-1)


def ema_centroids(centroids_ED: Tensor, sums_ED: Tensor, counts_E: Tensor, decay: float) -> Tensor:
    """Each centroid moved toward the mean of its unit tokens (their sum
    ``sums_ED`` over their number ``counts_E``), renormalized; centroids that
    got no token stay where they are."""
    mean_ED = sums_ED / counts_E.clamp_min(1)[:, None]
    moved_ED = F.normalize(decay * centroids_ED + (1 - decay) * mean_ED, dim=-1)
    return torch.where(counts_E[:, None] > 0, moved_ED, centroids_ED)


@ROUTERS.register("kmeans", KMeansConfig)
class KMeansRouter(Router):
    has_gate = False
    learns_routing = False  # centroids move by a moving average, not by gradients

    def __init__(self, cfg: KMeansConfig, d_model: int, num_experts: int, data: DataStats) -> None:
        super().__init__(cfg, d_model, num_experts, data)
        # Buffers, not parameters: the optimizer never touches them.
        self.register_buffer("centroids_ED", F.normalize(torch.randn(num_experts, d_model), dim=-1))
        self.register_buffer("bias_E", torch.zeros(num_experts))
        self.register_buffer("initialized", torch.tensor(False))
        # This step's unit tokens summed per nearest centroid, and their number.
        self.register_buffer("step_sums_ED", torch.zeros(num_experts, d_model), persistent=False)
        self.register_buffer("step_counts_E", torch.zeros(num_experts), persistent=False)

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        x_TD = x_TD.detach().float()  # no gradient through the choice
        if self.training and not self.initialized:
            self._forgy_init(x_TD)
        expert_T = nearest_centroid(x_TD, self.centroids_ED, self.bias_E)
        routing = one_expert_each(expert_T)
        if self.training:
            self.step_sums_ED.index_add_(0, expert_T, F.normalize(x_TD, dim=-1))
            self.step_counts_E += torch.bincount(expert_T, minlength=self.num_experts)
        else:
            routing.respects_capacity = self.cfg.eval_dropless
        return RouterOutput(routing, logits_TE=None)

    @torch.no_grad()
    def _forgy_init(self, x_TD: Tensor) -> None:
        pick = torch.randperm(x_TD.shape[0], device=x_TD.device)[: self.num_experts]
        self.centroids_ED[: pick.numel()] = F.normalize(x_TD[pick], dim=-1)
        if dist.is_initialized():  # expert parallelism: one set of centroids, rank 0's
            dist.broadcast(self.centroids_ED, src=0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def finish_step(self, sum_over_ranks: Callable[[Tensor], Tensor]) -> None:
        """Centroids toward the step's tokens, and the balancing bias from its load."""
        sums_ED, counts_E = sum_over_ranks(self.step_sums_ED), sum_over_ranks(self.step_counts_E)
        self.centroids_ED.copy_(ema_centroids(self.centroids_ED, sums_ED, counts_E, self.cfg.ema_decay))
        if self.cfg.balanced:
            self.bias_E.copy_(loss_free_bias_update(self.bias_E, counts_E, self.cfg.bias_rate))
        self.step_sums_ED.zero_()
        self.step_counts_E.zero_()

    def flops_per_token(self) -> dict[str, float]:
        """The E cosine similarities."""
        return {"router": linear_flops(self.centroids_ED.shape[1], self.num_experts)}
