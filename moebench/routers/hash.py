"""Hash layers (Roller et al. 2021, arXiv:2106.04426, section 3).

Each token goes, with weight 1, to the expert that its *input token id* maps
to, whatever its hidden state or context: no gate, no learned routing, no
auxiliary loss. Two of the paper's hash functions:

    random    a fixed random map from token id to expert, drawn from ``hash_seed``;
    balanced  token ids assigned by their frequency in the training data so
              that loads come out even: most frequent first, each to the
              expert with the least load so far (the paper's "balanced
              assignment"; greedy largest-first bin packing, Graham 1969).

Dropless by default (``router.dropless``): every token goes through its
hashed expert, as in the paper (section 3), which has no expert capacity. A
fixed map cannot send a frequent id's tokens elsewhere, so a capacity would
drop them at every step (11-18% of the assignments in training on the
language tasks at capacity factor 1.25). ``router.dropless=false`` applies the
``moe`` capacity as for any other router.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.errors import ConfigError
from moebench.routers import ROUTERS
from moebench.routers.base import (
    DataStats, Router, RouterConfig, RouterContext, RouterOutput, one_expert_each,
)


@dataclass
class HashConfig(RouterConfig):
    balanced: bool = False
    hash_seed: int = 0  # the random map (balanced: unused)
    dropless: bool = True  # no capacity, as the paper; false: the moe capacity applies


def random_hash(vocab_size: int, num_experts: int, seed: int) -> Tensor:
    """``expert_V``: a uniform random expert for every token id."""
    return torch.randint(num_experts, (vocab_size,), generator=torch.Generator().manual_seed(seed))


def balanced_hash(counts_V: Tensor, num_experts: int) -> Tensor:
    """``expert_V``: ids in decreasing frequency, each to the least loaded expert so far.

    With largest-first greedy packing no two loads differ by more than the
    largest single count (Graham 1969): loads are even unless one id is heavy.
    """
    counts = counts_V.tolist()
    loads = [(0.0, e) for e in range(num_experts)]  # a min-heap of (load, expert)
    expert_V = [0] * len(counts)
    for v in counts_V.argsort(descending=True, stable=True).tolist():
        load, e = heapq.heappop(loads)
        expert_V[v] = e
        heapq.heappush(loads, (load + counts[v], e))
    return torch.tensor(expert_V)


@ROUTERS.register("hash", HashConfig)
class HashRouter(Router):
    has_gate = False
    learns_routing = False  # a fixed map: router.freeze has nothing to fix

    def __init__(self, cfg: HashConfig, d_model: int, num_experts: int, data: DataStats) -> None:
        super().__init__(cfg, d_model, num_experts, data)
        if data.vocab_size is None:
            raise ConfigError("router.name", "hash", "tasks with token ids (a vocabulary)")
        if cfg.balanced and data.token_counts_V is None:
            raise ConfigError("router.balanced", True, "false on tasks without token counts")
        expert_V = (balanced_hash(data.token_counts_V, num_experts) if cfg.balanced
                    else random_hash(data.vocab_size, num_experts, cfg.hash_seed))
        self.register_buffer("expert_V", expert_V)

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        if ctx.token_ids_T is None:
            raise ConfigError("router.name", "hash", "inputs with token ids (token_ids=)")
        expert_T = self.expert_V[ctx.token_ids_T]
        return RouterOutput(one_expert_each(expert_T), logits_TE=None)

    def flops_per_token(self) -> dict[str, float]:
        return {}  # a table lookup, no gate
