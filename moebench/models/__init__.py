"""Models whose FFN layers come from :class:`moebench.models.ffn.FFNFactory`."""

from dataclasses import dataclass

from torch import Tensor

from moebench.moe.block import LayerStats


@dataclass
class ModelOutput:
    logits: Tensor
    # One entry per FFN layer in depth order; None for dense layers.
    layer_stats: list[LayerStats | None]

    @property
    def moe_stats(self) -> list[LayerStats]:
        return [s for s in self.layer_stats if s is not None]
