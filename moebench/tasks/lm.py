"""Language modelling on a token stream: the part every LM task shares.

A data set is a small subclass naming its :class:`~moebench.tasks.corpus.Corpus`,
its headline metric and its evaluation splits. An example is a random
contiguous window of the split's token stream, as nanoGPT's ``get_batch``:
``block_size + 1`` tokens, the first ``block_size`` the inputs and the last
``block_size`` the targets, so position t predicts token t + 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import II
from torch import Tensor, nn

from moebench.config import DataConfig, ModelConfig
from moebench.errors import ConfigError
from moebench.models.ffn import FFNFactory
from moebench.models.transformer import Transformer
from moebench.routers.base import DataStats
from moebench.tasks.base import Batch, Task, TaskConfig
from moebench.tasks.corpus import Corpus

# Headline metrics from the mean cross-entropy in nats per token.
FROM_NATS: dict[str, Callable[[float], float]] = {
    "bpc": lambda nats: nats / math.log(2),  # bits per character (or byte)
    "perplexity": math.exp,
}


@dataclass
class LMConfig(TaskConfig):
    # Tokens per example; the model's context length unless set smaller.
    block_size: int = II("model.block_size")


def random_windows(tokens_N: Tensor, batch_size: int, length: int, generator: torch.Generator) -> Tensor:
    """``[batch_size, length]`` int64: windows of ``tokens_N`` at uniform random starts."""
    start_B = torch.randint(len(tokens_N) - length + 1, (batch_size,), generator=generator)
    return tokens_N[start_B[:, None] + torch.arange(length)].long()


class LMTask(Task):
    """Causal language modelling; the masked LM subclass changes the batches."""

    corpus: Corpus
    quality_metric: str  # a key of FROM_NATS
    causal = True

    def __init__(self, cfg: LMConfig, data: DataConfig, seed: int) -> None:
        super().__init__(cfg, data, seed)
        tokens = self.corpus.load(data)
        self.vocab_size = tokens.vocab_size
        self.tokens = {split: torch.from_numpy(ids) for split, ids in tokens.splits.items()}
        self.check_windows_fit()

    @property
    def tokens_per_example(self) -> int:
        return self.cfg.block_size

    @property
    def window(self) -> int:
        """Tokens an example takes from the stream: the inputs and, one ahead, the targets."""
        return self.cfg.block_size + 1

    def check_windows_fit(self) -> None:
        """Every split must hold one window; fail now, not after training (when
        the evaluation draws from a shorter split than training did)."""
        split, n = min(((s, len(t)) for s, t in self.tokens.items()), key=lambda item: item[1])
        if self.window > n:
            longest = n - (self.window - self.cfg.block_size)
            raise ConfigError("task.block_size", self.cfg.block_size,
                              f"1..{longest}: the {split} split of {self.cfg.name} holds {n} tokens "
                              "(task.block_size follows model.block_size unless set)")

    def build_model(self, model_cfg: ModelConfig, ffn: FFNFactory) -> nn.Module:
        if self.cfg.block_size > model_cfg.block_size:
            raise ConfigError("task.block_size", self.cfg.block_size,
                              f"at most model.block_size={model_cfg.block_size}")
        return Transformer(model_cfg, self.vocab_size, self.causal, ffn)

    def data_stats(self) -> DataStats:
        counts_V = torch.bincount(self.tokens["train"], minlength=self.vocab_size)
        return DataStats(self.vocab_size, counts_V)

    def split_tokens(self, split: str) -> Tensor:
        if split not in self.tokens:
            raise ConfigError("split", split, list(self.tokens))
        return self.tokens[split]

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch:
        L = self.cfg.block_size
        window_BW = random_windows(self.split_tokens(split), batch_size, self.window, generator)  # W = L + 1
        inputs_BL, targets_BL = window_BW[:, :L], window_BW[:, 1:]
        return Batch(inputs_BL, targets_BL, token_ids=inputs_BL)

    def quality(self, val_loss: float, val_accuracy: float) -> float:
        return FROM_NATS[self.quality_metric](val_loss)
