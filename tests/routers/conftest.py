"""Helpers for the router tests: a tiny causal LM task that needs no data
files, and small models built the way a run builds them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moebench.config import ModelConfig, MoEConfig
from moebench.models.ffn import FFNFactory
from moebench.models.transformer import Transformer
from moebench.routers import ROUTERS
from moebench.routers.base import DataStats
from moebench.tasks import Batch, Task, TaskConfig

VOCAB, SEQ_LEN = 32, 16


class RandomTokens(Task):
    """Causal language modelling on uniformly random token sequences."""

    quality_metric = "perplexity"
    causal = True
    tokens_per_example = SEQ_LEN

    def __init__(self) -> None:
        super().__init__(TaskConfig(name="random_tokens"), data=None, seed=0)

    def build_model(self, model_cfg: ModelConfig, ffn: FFNFactory) -> nn.Module:
        return Transformer(model_cfg, VOCAB, causal=True, ffn=ffn)

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch:
        window_BW = torch.randint(VOCAB, (batch_size, SEQ_LEN + 1), generator=generator)
        return Batch(window_BW[:, :-1], window_BW[:, 1:], token_ids=window_BW[:, :-1])

    def data_stats(self) -> DataStats:
        return DataStats(VOCAB, torch.ones(VOCAB))

    def quality(self, val_loss: float, val_accuracy: float) -> float:
        return math.exp(val_loss)


MODEL = ModelConfig(name="test", d_model=32, n_layers=2, n_heads=2, d_ff=32, block_size=SEQ_LEN)


@pytest.fixture
def random_tokens() -> RandomTokens:
    return RandomTokens()


@pytest.fixture
def lm_model(random_tokens):
    """``lm_model(router, moe_options, **router_options)``: a small causal
    transformer on :class:`RandomTokens` whose FFNs are ``router``'s layers."""

    def build(router: str, moe_options: dict | None = None, **router_options: object) -> nn.Module:
        torch.manual_seed(0)
        router_cfg = ROUTERS.get(router).config_cls(name=router, **router_options)
        moe = MoEConfig(num_experts=4, **(moe_options or {}))
        ffn = FFNFactory(router_cfg, MODEL, moe, random_tokens.data_stats())
        return random_tokens.build_model(MODEL, ffn)

    return build
