"""The task contract: data batches, a model for them, a loss and a headline metric.

A task owns its data and decides which model family fits it (a causal
transformer for language modelling, a per-token MLP for the synthetic task);
the FFN layers of that model come from the factory it is given, so every
router plugs into every task the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from moebench.config import DataConfig, ModelConfig
from moebench.models import ModelOutput
from moebench.models.ffn import FFNFactory
from moebench.routers.base import DataStats


@dataclass
class TaskConfig:
    name: str = MISSING


@dataclass
class Batch:
    """One batch. ``inputs`` is ``[B, L]`` token ids (sequence tasks) or
    ``[B, d_in]`` features (synthetic); ``targets`` matches the model output
    positions. ``loss_mask`` marks the positions that count (masked LM)."""

    inputs: Tensor
    targets: Tensor
    token_ids: Tensor | None = None  # what hash routing sees; [B, L] or [B]
    cluster_ids: Tensor | None = None  # known latent clusters (synthetic)
    loss_mask: Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{k: None if v is None else v.to(device) for k, v in moved.items()})

    def counted_T(self) -> Tensor:
        """Bool per target, flattened in the layers' token order: whether it has a loss."""
        if self.loss_mask is None:
            return torch.ones(self.targets.numel(), dtype=torch.bool, device=self.targets.device)
        return self.loss_mask.reshape(-1).bool()


class Task(ABC):
    #: Name of the headline metric in the run record, e.g. "bpc", "perplexity".
    quality_metric: str
    higher_is_better: bool = False
    #: True when the model must not see later positions (causal LM).
    causal: bool = False
    #: The splits evaluated at the end of a run; the first is used during training.
    eval_splits: tuple[str, ...] = ("val",)

    def __init__(self, cfg: TaskConfig, data: DataConfig, seed: int) -> None:
        self.cfg, self.data, self.seed = cfg, data, seed

    @abstractmethod
    def build_model(self, model_cfg: ModelConfig, ffn: FFNFactory) -> nn.Module:
        """The model for this task; its FFN layers come from ``ffn``."""

    @abstractmethod
    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch drawn with ``generator`` (so runs repeat per seed)."""

    @property
    @abstractmethod
    def tokens_per_example(self) -> int:
        """Tokens one example contributes to a layer (sequence length, or 1)."""

    def data_stats(self) -> DataStats:
        """Vocabulary size and train-split token counts, for hash routing."""
        return DataStats()

    def token_losses(self, out: ModelOutput, batch: Batch) -> Tensor:
        """Per-token cross-entropy (nats, float32), flattened in the layers'
        token order; 0 where nothing counts. An adaptive head (``out.head``)
        is computed at the counted positions only."""
        targets_T = batch.targets.flatten()
        if out.head is None:
            losses_T = nn.functional.cross_entropy(out.logits.flatten(0, -2).float(), targets_T,
                                                   reduction="none")
            return losses_T if batch.loss_mask is None else losses_T * batch.loss_mask.flatten()
        hidden_TD = out.hidden.flatten(0, -2)
        if batch.loss_mask is None:
            return out.head.token_losses(hidden_TD, targets_T)
        counted_T = batch.counted_T()
        counted_losses_N = out.head.token_losses(hidden_TD[counted_T], targets_T[counted_T])
        losses_T = torch.zeros(targets_T.shape, device=targets_T.device)
        return losses_T.masked_scatter(counted_T, counted_losses_N)

    def predictions(self, out: ModelOutput, batch: Batch) -> Tensor:
        """The most probable target per token, flattened as :meth:`token_losses`
        (for accuracy); an adaptive head predicts at the counted positions
        only, and gives -1 elsewhere."""
        if out.head is None:
            return out.logits.reshape(batch.targets.numel(), -1).argmax(-1)
        counted_T = batch.counted_T()
        predicted_T = torch.full((batch.targets.numel(),), -1, device=batch.targets.device)
        predicted_T[counted_T] = out.head.predict(out.hidden.flatten(0, -2)[counted_T])
        return predicted_T

    @abstractmethod
    def quality(self, val_loss: float, val_accuracy: float) -> float:
        """The headline metric from the mean loss (nats/token) and accuracy."""
