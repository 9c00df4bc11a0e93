"""The DeepSeekMoE layer: fine-grained and shared experts, balanced without an auxiliary loss.

DeepSeekMoE (Dai et al. 2024, arXiv:2401.06066), section 3:

* fine-grained expert segmentation (3.1): each of the E experts of width F
  is split into m experts of width F / m, and a token picks m K of the m E;
* shared expert isolation (3.2): K_s of the m E experts are shared, every
  token passes through them, and the routed pick shrinks to m K - K_s
  (eqs. 9-11):
      h_t = sum_{i <= K_s} FFN_i(u_t) + sum_{i > K_s} g_{i,t} FFN_i(u_t) + u_t.

With the same E, F and K, FLOPs and parameters equal those of the coarse
top-K layer, so the comparison with top1 / top2 is at equal cost. Not at
equal speed: the same FLOPs run as m times as many matmuls, each m times
smaller (31 routed experts of width F / 4 at the defaults), where a CPU's
per-call cost dominates: 0.29x (synthetic) and 0.43x (Tiny Shakespeare) of
the dense model's FLOP/s, 0.55-0.73x on the word-level tasks
(results/bench/train_step_cpu.json). That is the price of fine granularity
on small matrices, which the benchmark reports rather than hides.

Auxiliary-loss-free load balancing (DeepSeek-V3, arXiv:2412.19437, section
2.1.2; Wang et al. 2024, arXiv:2408.15664): a per-expert bias b_e is added to
the affinities for the top-k *selection only* (V3 eq. 16); the combine
weights come from the unbiased affinities. After each training step
    b_e <- b_e + gamma * sign(mean load - load_e),
so an overloaded expert's bias falls and an underloaded one's rises.
Affinities are a softmax (DeepSeekMoE eq. 11; weights are the probabilities)
or a sigmoid (V3 eq. 15; weights normalized over the selected, eq. 13).

Complementary sequence-wise balance loss (V3 eqs. 17-20), on by default with
the paper's alpha = 1e-4 (``router.seq_balance_coef``; 0 turns it off): for
each sequence of T tokens
    L_Bal = alpha * sum_i f_i P_i,
    f_i = N_r / (K_r T) * #{t : s_{i,t} in TopK(s_t, K_r)},
    P_i = (1 / T) sum_t s_{i,t} / sum_j s_{j,t},
averaged over the batch's sequences; it is alpha when routing is uniform.
f_i counts the top K_r of the unbiased affinities, as eq. 18 writes it (and
as Megatron-LM's ``compute_routing_scores_for_aux_loss``), not the biased
pick that is dispatched. Tokens without sequences (the synthetic task) count
as one sequence, and so does each position group (moe/grouping.py).

Dropless by default (``router.dropless``), as V3 (section 2.1.2, "No
Token-Dropping"): every token reaches its K_r routed experts. A capacity
would also leak the future on a causal task: it keeps every first choice
before any second one, so a later token's first choice can evict an earlier
token's lower ones (moe/grouping.py); dropless, a token's experts depend on
itself alone. ``router.dropless=false`` applies the ``moe`` capacity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from moebench.config import ModelConfig, MoEConfig
from moebench.errors import ConfigError
from moebench.metrics.flops import ffn_flops, param_count
from moebench.moe.block import LayerStats, MoEBlock
from moebench.moe.experts import FeedForward
from moebench.routers import ROUTERS
from moebench.routers.base import (
    DataStats, Router, RouterConfig, RouterContext, RouterOutput, sparse_from_topk,
)

SCORE_FNS = ("softmax", "sigmoid")


@dataclass
class DeepSeekMoEConfig(RouterConfig):
    # router.k and moe.num_experts describe the coarse layer this one refines.
    granularity: int = 4  # m: each expert split into m of width d_ff / m
    num_shared: int = 1  # K_s shared experts of width d_ff / m
    score_fn: str = "sigmoid"  # softmax (DeepSeekMoE) | sigmoid (DeepSeek-V3)
    # gamma; 0 turns the balancing off. V3 used 0.001 for its first 14.3T tokens; in a
    # 300-step run the bias then still grows linearly at the end, 0.01 settles.
    bias_rate: float = 1e-2
    seq_balance_coef: float = 1e-4  # alpha of V3's sequence-wise balance loss (eq. 17); 0: off
    dropless: bool = True  # no capacity, as V3; false: the moe capacity applies

    def __post_init__(self) -> None:
        if self.granularity < 1:
            raise ConfigError("router.granularity", self.granularity, "an integer >= 1")
        if self.num_shared < 0:
            raise ConfigError("router.num_shared", self.num_shared, "an integer >= 0")
        if self.score_fn not in SCORE_FNS:
            raise ConfigError("router.score_fn", self.score_fn, SCORE_FNS)
        if self.bias_rate < 0:
            raise ConfigError("router.bias_rate", self.bias_rate, "a number >= 0")
        if self.seq_balance_coef < 0:
            raise ConfigError("router.seq_balance_coef", self.seq_balance_coef, "a number >= 0")


def biased_topk(scores_TE: Tensor, bias_E: Tensor, k: int, normalize: bool) -> tuple[Tensor, Tensor]:
    """``(weight_TK, expert_TK)``: the top k of scores + bias (V3 eq. 16),
    weighted by their unbiased scores, normalized over the k when ``normalize`` (eq. 13)."""
    expert_TK = (scores_TE.detach() + bias_E).topk(k, dim=-1).indices
    weight_TK = scores_TE.gather(1, expert_TK)
    if normalize:
        weight_TK = weight_TK / weight_TK.sum(-1, keepdim=True)
    return weight_TK, expert_TK


def sequence_balance_loss(scores_TE: Tensor, k: int, num_sequences: int) -> Tensor:
    """sum_i f_i P_i of V3 eqs. 17-20 (without alpha) for each of the
    ``num_sequences`` equal runs of consecutive tokens, averaged; 1 when uniform."""
    E = scores_TE.shape[1]
    chosen_TE = torch.zeros_like(scores_TE).scatter(1, scores_TE.detach().topk(k, dim=-1).indices, 1.0)
    f_BE = chosen_TE.view(num_sequences, -1, E).mean(1) * E / k  # eq. 18
    normalized_TE = scores_TE / scores_TE.sum(-1, keepdim=True)  # eq. 19
    P_BE = normalized_TE.view(num_sequences, -1, E).mean(1)  # eq. 20
    return (f_BE * P_BE).sum(-1).mean()


def loss_free_bias_update(bias_E: Tensor, load_E: Tensor, rate: float) -> Tensor:
    """b_e + gamma * sign(mean load - load_e) (V3 section 2.1.2)."""
    load_E = load_E.to(bias_E.dtype)
    return bias_E + rate * torch.sign(load_E.mean() - load_E)


@ROUTERS.register("deepseek_moe", DeepSeekMoEConfig)
class DeepSeekMoERouter(Router):
    """Routes to the m E - K_s routed experts; ``cfg.k`` here is m K - K_s."""

    def __init__(self, cfg: DeepSeekMoEConfig, d_model: int, num_experts: int, data: DataStats) -> None:
        super().__init__(cfg, d_model, num_experts, data)
        # State, like BatchNorm's running statistics: moved by the layer, not by
        # gradients; and this step's load before capacity, summed over its forwards.
        self.register_buffer("bias_E", torch.zeros(num_experts))
        self.register_buffer("step_load_E", torch.zeros(num_experts), persistent=False)

    @classmethod
    def build_layer(cls, router_cfg: DeepSeekMoEConfig, model_cfg: ModelConfig, moe_cfg: MoEConfig,
                    data: DataStats) -> nn.Module:
        m, shared, k = router_cfg.granularity, router_cfg.num_shared, router_cfg.k
        if model_cfg.d_ff % m:
            raise ConfigError("router.granularity", m, f"a divisor of model.d_ff={model_cfg.d_ff}")
        if shared >= m * k:
            raise ConfigError("router.num_shared", shared, f"0..{m * k - 1} (at least one routed expert)")
        d_expert = model_cfg.d_ff // m
        # The standard block, on the refined experts (DeepSeekMoE eqs. 9-11).
        routed = super().build_layer(
            replace(router_cfg, k=m * k - shared),
            replace(model_cfg, d_ff=d_expert),
            replace(moe_cfg, num_experts=m * moe_cfg.num_experts - shared),
            data,
        )
        # K_s FFNs of width F / m, summed, are one FFN of width K_s F / m.
        shared_ffn = FeedForward(model_cfg.d_model, shared * d_expert, model_cfg.activation)
        return DeepSeekMoELayer(routed, shared_ffn if shared else None)

    @classmethod
    def sharded_experts(cls, router_cfg: DeepSeekMoEConfig, moe_cfg: MoEConfig) -> tuple[int, str]:
        """The routed experts; the shared ones are replicated, as every other FFN."""
        routed = router_cfg.granularity * moe_cfg.num_experts - router_cfg.num_shared
        return routed, (f"the {routed} routed experts (router.granularity={router_cfg.granularity} x "
                        f"moe.num_experts={moe_cfg.num_experts} - router.num_shared={router_cfg.num_shared})")

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        logits_TE = self.gate_logits(x_TD)
        sigmoid = self.cfg.score_fn == "sigmoid"
        scores_TE = torch.sigmoid(logits_TE) if sigmoid else torch.softmax(logits_TE, dim=-1)
        weight_TK, expert_TK = biased_topk(scores_TE, self.bias_E, self.cfg.k, normalize=sigmoid)
        aux: dict[str, Tensor] = {}
        if self.cfg.seq_balance_coef > 0:
            sequences = ctx.batch_shape[0] if ctx.batch_shape is not None else ctx.num_groups
            aux["seq_balance"] = self.cfg.seq_balance_coef * sequence_balance_loss(
                scores_TE, self.cfg.k, sequences)
        return RouterOutput(sparse_from_topk(scores_TE, weight_TK, expert_TK), logits_TE, aux)

    @torch.no_grad()
    def finish_step(self, sum_over_ranks: Callable[[Tensor], Tensor]) -> None:
        """V3's update at the end of each step, from the whole batch's load."""
        load_E = sum_over_ranks(self.step_load_E)
        self.bias_E.copy_(loss_free_bias_update(self.bias_E, load_E, self.cfg.bias_rate))
        self.step_load_E.zero_()


class DeepSeekMoELayer(nn.Module):
    """Routed experts (a standard MoE block) plus shared experts that see every token."""

    def __init__(self, routed: MoEBlock, shared: FeedForward | None) -> None:
        super().__init__()
        self.routed, self.shared = routed, shared

    def forward(self, x: Tensor, ctx: RouterContext) -> tuple[Tensor, LayerStats]:
        y, stats = self.routed(x, ctx)
        router: DeepSeekMoERouter = self.routed.router
        if self.training:  # the bias moves once per step (router.finish_step)
            router.step_load_E += stats.routed_E
        stats.diagnostics["balance_bias"] = router.bias_E.clone()
        if self.shared is not None:
            y = y + self.shared(x)
        return y, stats

    def flops_per_token(self, stats: LayerStats | None) -> dict[str, float]:
        flops = self.routed.flops_per_token(stats)
        if self.shared is not None:
            s = self.shared
            flops["shared_experts"] = ffn_flops(s.w_in.in_features, s.w_out.in_features, s.activation)
        return flops

    def active_params(self, stats: LayerStats | None) -> float:
        shared = param_count(self.shared) if self.shared is not None else 0
        return self.routed.active_params(stats) + shared
