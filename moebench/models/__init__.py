"""Models whose FFN layers come from :class:`moebench.models.ffn.FFNFactory`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from moebench.moe.block import LayerStats

if TYPE_CHECKING:
    from moebench.models.adaptive import AdaptiveHead


@dataclass
class ModelOutput:
    """A forward's outputs: ``logits`` ``[..., V]``; or, from a model with an
    adaptive softmax, no logits but ``hidden`` (``[..., D]``, the head's input)
    and the ``head``, which computes only what the task asks of it."""

    logits: Tensor | None
    # One entry per FFN layer in depth order; None for dense layers.
    layer_stats: list[LayerStats | None]
    hidden: Tensor | None = None
    head: AdaptiveHead | None = None

    @property
    def moe_stats(self) -> list[LayerStats]:
        return [s for s in self.layer_stats if s is not None]
