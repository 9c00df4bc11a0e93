"""Language modelling on a token stream: the part every LM task shares.

A data set is a small subclass naming its :class:`~moebench.tasks.corpus.Corpus`,
its headline metric and its evaluation splits. An example is a random
contiguous window of the split's token stream, as nanoGPT's ``get_batch``:
``block_size + 1`` tokens, the first ``block_size`` the inputs and the last
``block_size`` the targets, so position t predicts token t + 1.

A word-level task (:class:`WordLMTask`) chooses its embedding and output
layer (``task.head``): a table and a full softmax tied to it, as every
character-level task has, or an adaptive input (Baevski & Auli 2019) and adaptive
softmax (Grave et al. 2017; models/adaptive.py) with clusters cut at
``task.adaptive_cutoffs`` in the words ranked by training frequency, as
fairseq's WikiText-103 models. The word-level tasks (wikitext2, ptb,
wikitext2_mlm) default to adaptive in their conf/task/*.yaml, since a
10k-33k-way softmax would be most of a step at the ``tiny`` preset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import II
from torch import Tensor, nn

from moebench.config import DataConfig, ModelConfig
from moebench.errors import ConfigError
from moebench.models.ffn import FFNFactory
from moebench.models.adaptive import AdaptiveHead, AdaptiveInput
from moebench.models.transformer import Transformer
from moebench.routers.base import DataStats
from moebench.tasks.base import Batch, Task, TaskConfig
from moebench.tasks.corpus import Corpus

# Headline metrics from the mean cross-entropy in nats per token.
FROM_NATS: dict[str, Callable[[float], float]] = {
    "bpc": lambda nats: nats / math.log(2),  # bits per character (or byte)
    "perplexity": math.exp,
}
HEADS = ("full", "adaptive")


@dataclass
class LMConfig(TaskConfig):
    # Tokens per example; the model's context length unless set smaller.
    block_size: int = II("model.block_size")


@dataclass
class WordLMConfig(LMConfig):
    # Embedding and output layer: full (a table, and a softmax over the
    # vocabulary tied to it) or adaptive (adaptive input and softmax; Baevski
    # & Auli 2019, Grave et al. 2017), with clusters starting at each of
    # adaptive_cutoffs (frequency ranks), each narrowed by adaptive_div_value
    # (fairseq's adaptive_softmax_factor and adaptive_input_factor, 4).
    head: str = "full"
    adaptive_cutoffs: list[int] = field(default_factory=list)
    adaptive_div_value: float = 4.0


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
        return Transformer(model_cfg, self.vocab_size, self.causal, ffn, self.adaptive_layers(model_cfg))

    def adaptive_layers(self, model_cfg: ModelConfig) -> tuple[AdaptiveInput, AdaptiveHead] | None:
        """An adaptive input and softmax for the model, or None: a table and a full softmax."""
        return None

    @classmethod
    def vocabulary(cls, data: DataConfig) -> list[str]:
        """Each input token id's text."""
        return cls.corpus.vocabulary(data)

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


class WordLMTask(LMTask):
    """A word-level task: its embedding and output layer may be adaptive
    (``task.head``), which a 10k-33k-word vocabulary needs at small widths."""

    def __init__(self, cfg: WordLMConfig, data: DataConfig, seed: int) -> None:
        super().__init__(cfg, data, seed)
        self.check_head()

    def check_head(self) -> None:
        """``task.head`` and the adaptive cutoffs against this vocabulary, at load."""
        cfg, V = self.cfg, self.vocab_size
        if cfg.head not in HEADS:
            raise ConfigError("task.head", cfg.head, HEADS)
        if cfg.head == "full":
            return
        cutoffs = list(cfg.adaptive_cutoffs)
        increasing = all(a < b for a, b in zip(cutoffs, cutoffs[1:]))
        if not cutoffs or not increasing or not 0 < cutoffs[0] or not cutoffs[-1] < V:
            raise ConfigError("task.adaptive_cutoffs", cutoffs,
                              f"one or more increasing integers in 1..{V - 1} "
                              f"({cfg.name} has {V} words)")
        if not cfg.adaptive_div_value >= 1:
            raise ConfigError("task.adaptive_div_value", cfg.adaptive_div_value, "a number >= 1")

    def adaptive_layers(self, model_cfg: ModelConfig) -> tuple[AdaptiveInput, AdaptiveHead] | None:
        if self.cfg.head == "full":
            return None
        d, cutoffs, div = model_cfg.d_model, list(self.cfg.adaptive_cutoffs), self.cfg.adaptive_div_value
        if d // div ** len(cutoffs) < 1:
            raise ConfigError("task.adaptive_cutoffs", cutoffs,
                              f"fewer cutoffs: the last cluster's width model.d_model={d} / "
                              f"task.adaptive_div_value={div}^{len(cutoffs)} is below 1")
        # The input ranks ids by how often they are inputs (data_stats: a
        # masked LM's [MASK] is frequent), the head by how often they are
        # targets in train ([MASK] never is); for causal LM the two agree.
        target_counts_V = torch.bincount(self.tokens["train"].long(), minlength=self.vocab_size)
        return (AdaptiveInput(d, self.data_stats().token_counts_V, cutoffs, div),
                AdaptiveHead(d, target_counts_V, cutoffs, div))
