"""Masked language modelling on WikiText-2 (BERT's objective, Devlin et al. 2019).

The non-causal task: attention is bidirectional, so routers that decide a
token's expert from the other tokens of its sequence (expert-choice, Soft
MoE, BASE) are fair here. An example is a random window of ``block_size``
tokens of the ``wikitext2`` token stream, corrupted by :func:`bert_mask`;
only the chosen positions count. Metric: cross-entropy on those positions in
nats (lower is better); the run also reports accuracy on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.config import DataConfig
from moebench.errors import ConfigError
from moebench.routers.base import DataStats
from moebench.tasks import TASKS
from moebench.tasks.base import Batch
from moebench.tasks.lm import WordLMConfig, WordLMTask, random_windows
from moebench.tasks.wikitext2 import WIKITEXT2


# What becomes of a chosen token (BERT): [MASK], a random token, or (the rest) itself.
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1


@dataclass
class MLMConfig(WordLMConfig):
    mask_prob: float = 0.15  # share of positions predicted (BERT)


def bert_mask(tokens_BL: Tensor, mask_id: int, mask_prob: float,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """BERT's corruption (Devlin et al. 2019, section 3.1): each position is
    chosen with probability ``mask_prob``; a chosen token becomes ``mask_id``
    80% of the time, a uniformly random token (ids below ``mask_id``) 10%, and
    stays itself 10%. Positions are chosen independently, as Hugging Face's
    DataCollatorForLanguageModeling does (BERT fixed the count per sequence).

    Returns the corrupted inputs and the loss mask (1.0 at chosen positions).
    """
    chosen_BL = torch.rand(tokens_BL.shape, generator=generator) < mask_prob
    action_BL = torch.rand(tokens_BL.shape, generator=generator)
    random_BL = torch.randint(mask_id, tokens_BL.shape, generator=generator)
    inputs_BL = torch.where(chosen_BL & (action_BL < MASK_SHARE), mask_id, tokens_BL)
    inputs_BL = torch.where(chosen_BL & (action_BL >= 1 - RANDOM_SHARE), random_BL, inputs_BL)
    return inputs_BL, chosen_BL.float()


@TASKS.register("wikitext2_mlm", MLMConfig)
class WikiText2MLM(WordLMTask):
    corpus = WIKITEXT2
    quality_metric = "masked_loss"
    causal = False
    eval_splits = ("val", "test")

    def __init__(self, cfg: MLMConfig, data: DataConfig, seed: int) -> None:
        if not 0 < cfg.mask_prob < 1:
            raise ConfigError("task.mask_prob", cfg.mask_prob, "0 < mask_prob < 1")
        super().__init__(cfg, data, seed)
        # [MASK] takes the id after the corpus's vocabulary, as BERT adds it to its own.
        self.mask_id = self.vocab_size
        self.vocab_size += 1

    @classmethod
    def vocabulary(cls, data: DataConfig) -> list[str]:
        return [*super().vocabulary(data), "[MASK]"]  # mask_id: the id after the corpus's

    @property
    def window(self) -> int:
        return self.cfg.block_size  # the targets are the inputs themselves

    def data_stats(self) -> DataStats:
        """Expected frequencies of the *input* ids (what hash routing sees) under
        :func:`bert_mask`: a chosen token leaves for [MASK] or a uniform random id."""
        counts_V = super().data_stats().token_counts_V.double()
        p, N, V = self.cfg.mask_prob, counts_V.sum(), self.mask_id
        counts_V[:V] = counts_V[:V] * (1 - p * (MASK_SHARE + RANDOM_SHARE)) + p * RANDOM_SHARE * N / V
        counts_V[self.mask_id] = p * MASK_SHARE * N
        return DataStats(self.vocab_size, counts_V)

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch:
        tokens_BL = random_windows(self.split_tokens(split), batch_size, self.window, generator)
        inputs_BL, loss_mask_BL = bert_mask(tokens_BL, self.mask_id, self.cfg.mask_prob, generator)
        return Batch(inputs_BL, tokens_BL, token_ids=inputs_BL, loss_mask=loss_mask_BL)

    def quality(self, val_loss: float, val_accuracy: float) -> float:
        return val_loss
