"""Dense softmax gating: the textbook mixture of experts (Jacobs et al. 1991,
"Adaptive Mixtures of Local Experts"; the softmax gate of Shazeer et al. 2017, eq. 2).

y = sum_e softmax(W_g x)_e FFN_e(x): every token reaches all E experts (k = E),
weighted by its gate, and nothing is dropped. The most compute of any router
here, and the function that sparse routing approximates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moebench.routers import ROUTERS
from moebench.routers.base import Router, RouterConfig, RouterContext, RouterOutput
from moebench.routers.token_choice import topk_routing


@dataclass
class DenseSoftmaxConfig(RouterConfig):
    pass  # k is moe.num_experts (conf/router/dense_softmax.yaml)


@ROUTERS.register("dense_softmax", DenseSoftmaxConfig)
class DenseSoftmaxRouter(Router):
    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        logits_TE = self.gate_logits(x_TD)
        probs_TE = torch.softmax(logits_TE, dim=-1)
        routing = topk_routing(probs_TE, self.num_experts, renormalize=False)
        routing.respects_capacity = True  # each expert takes all T tokens: dropless by design
        return RouterOutput(routing, logits_TE)
