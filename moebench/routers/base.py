"""The router contract: what every router receives and what it returns.

Shape suffixes used throughout moebench (see DESIGN.md):
    T tokens of one layer      D model width        E experts
    K experts per token        C capacity           A assignments
    S slots per expert         N = E * S slots      F expert hidden width
    G token groups             L tokens per group

A router maps ``x_TD`` (plus a small :class:`RouterContext`) to a
:class:`RouterOutput` whose ``routing`` is either

* :class:`SparseRouting` -- a flat list of ``(token, expert, weight)``
  assignments. A flat list rather than a ``[T, K]`` array because
  expert-choice and dropless routing give a variable number of experts per
  token; one dispatcher then serves every sparse router.
* :class:`SoftRouting` -- dispatch and combine weights over ``E * S`` slots
  per group of tokens (Soft MoE), each slot a weighted mixture of its group's
  tokens.

The routing *rule* of each router is a pure function of logits so it can be
tested on hand-written inputs; the :class:`Router` module around it only holds
parameters and adds the stability losses that every logit-based router shares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from moebench.config import ModelConfig, MoEConfig


@dataclass
class RouterConfig:
    """Options every router understands; each router subclasses this."""

    name: str = MISSING
    k: int = 1  # experts per token (token-choice routers); sets the capacity formula
    z_loss_coef: float = 0.0  # ST-MoE router z-loss (Zoph et al. 2022, eq. 5)
    # Adds coef * mean routing entropy: > 0 sharpens routing, < 0 spreads it.
    entropy_coef: float = 0.0
    # Causality (see moebench/moe/block.py): whether a router that decides a
    # token's expert from other tokens may run on a causal task at all.
    allow_leaky: bool = False
    # Fix the router's learned parameters at their random initialization
    # (Router.learns_routing says which), so that a table shows what learning
    # the router is worth.
    freeze: bool = False


@dataclass
class RouterContext:
    """What a router may know beyond the hidden states of its layer.

    ``token_ids_T`` are the *input* token ids (hash routing), ``cluster_ids_T``
    the latent cluster of each token when the task knows it (synthetic task,
    oracle routing). ``batch_shape`` is ``(B, L)`` when the T tokens come from
    B sequences of length L, so a block can form routing groups.

    ``num_groups``: the T tokens are G routing groups of T / G consecutive
    tokens (:func:`token_groups`), each routed as if it were alone: capacity
    applies per group, a rule that compares tokens (expert choice, BASE,
    S-BASE, Soft MoE) compares them within a group, and balance losses are
    averaged over groups, as GShard does. ``moe.routing_groups=position``
    lays the tokens out by position for this (moe/grouping.py).
    """

    step: int = 0
    token_ids_T: Tensor | None = None
    cluster_ids_T: Tensor | None = None
    batch_shape: tuple[int, int] | None = None
    num_groups: int = 1
    causal: bool = False  # the model attends causally (set by the model; moe.routing_groups=auto)


@dataclass
class DataStats:
    """What a router may know about the task's data before training.

    Hash routing maps token ids and needs the vocabulary size; its balanced
    variant needs how often each id occurs in the training data.
    """

    vocab_size: int | None = None
    token_counts_V: Tensor | None = None  # counts, or any proportional frequencies


@dataclass
class SparseRouting:
    """A flat list of A assignments of tokens to experts.

    ``choice_A`` is the rank of the assignment among its token's choices (0
    for the first expert, 1 for the second, ...); ``score_A`` is the router's
    confidence. Under capacity, the dispatcher keeps first choices before
    second ones, and within a rank orders by position or by score
    (batch-prioritized routing), as configured.
    """

    token_idx_A: Tensor  # int64
    expert_idx_A: Tensor  # int64
    weight_A: Tensor  # combine weight, differentiable
    choice_A: Tensor  # int64
    score_A: Tensor  # detached priority score
    # True when the router's assignment already fits the capacity it chose
    # (expert-choice, BASE): the dispatcher then drops nothing.
    respects_capacity: bool = False


@dataclass
class SoftRouting:
    """Soft MoE (Puigcerver et al. 2023): dense dispatch/combine over slots, per group.

    The T tokens form G groups of L consecutive tokens (:func:`token_groups`;
    the last group padded when G does not divide T). In each group,
    ``dispatch_GLN`` is normalized over the group's tokens (each slot a convex
    mix of them; padding has weight 0) and ``combine_GLN`` over its N = E * S
    slots, grouped by expert.
    """

    dispatch_GLN: Tensor
    combine_GLN: Tensor
    slots_per_expert: int


def token_groups(x_T: Tensor, num_groups: int) -> Tensor:
    """``x_GL...``: the T rows of ``x_T`` as G groups of L = ceil(T / G)
    consecutive rows, the last one padded with zero rows (a view when G divides T)."""
    T, rest = x_T.shape[0], x_T.shape[1:]
    L = -(-T // num_groups)
    if num_groups * L > T:
        x_T = torch.cat([x_T, x_T.new_zeros(num_groups * L - T, *rest)])
    return x_T.view(num_groups, L, *rest)


@dataclass
class RouterOutput:
    routing: SparseRouting | SoftRouting
    logits_TE: Tensor | None  # float32; for metrics and the stability losses
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    # For routers trained from the model's loss (REINFORCE): given the
    # detached per-token loss of this step and which tokens have a loss at all
    # (bool; masked LM scores only its masked positions), both in the token
    # order of x_TD, returns further auxiliary losses. The training loop calls
    # it after the forward pass; no global state is involved.
    on_token_loss: Callable[[Tensor, Tensor], dict[str, Tensor]] | None = None


class Router(nn.Module):
    """Base module: a linear gate in float32 and the shared stability losses.

    Subclasses implement :meth:`route`. The gate is computed in float32
    whatever the model's dtype, autocast included (:func:`float32_gate`), as
    Switch Transformer recommends for stability ("selective precision", Fedus
    et al. 2021, section 2.4).
    """

    # Whether the rule lets a token's routing depend on other tokens of the
    # same group (expert-choice, Soft MoE, BASE): then a causal model leaks.
    uses_other_tokens: bool = False
    # Whether the router scores tokens with the linear gate; routers that do
    # not (hash routing, Soft MoE) set False and hold no gate parameters.
    has_gate: bool = True
    # Whether the router learns its routing by gradient, in parameters of its
    # own: the gate (BASE: its expert centroids), and where a router has them
    # noisy top-k's noise gate, RL-R's learned baseline, Soft MoE's slots Phi
    # and scale. ``router.freeze=true`` keeps all of them at their random
    # initialization (:meth:`build_layer`). Buffers moved without gradients
    # keep moving (DeepSeek's balancing bias: a load controller, not a gate;
    # RL-R's moving-average baseline), and the auxiliary losses stay: they no
    # longer train the gate, but reach the layers below it through its input,
    # as the task loss does through the combine weights. False for routing by
    # a fixed rule (hash, oracle) or by state moved without gradients
    # (k-means' centroids): nothing there for freeze to fix.
    learns_routing: bool = True
    # Whether the layer sends tokens' rows to experts, which expert parallelism
    # would exchange between processes (metrics/communication.py); False for
    # the dense baselines. (PEER's and muMoE's layers have no Router at all.)
    sends_rows: bool = True

    def __init__(self, cfg: RouterConfig, d_model: int, num_experts: int, data: DataStats) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_experts = num_experts
        if self.has_gate:
            self.gate = nn.Linear(d_model, num_experts, bias=False)
            # Small init keeps early routing near uniform (Switch, section 2.4).
            nn.init.normal_(self.gate.weight, std=0.02)

    @classmethod
    def build_layer(cls, router_cfg: RouterConfig, model_cfg: ModelConfig, moe_cfg: MoEConfig,
                    data: DataStats) -> nn.Module:
        """The FFN layer this router drives: by default a standard MoE block.

        Routers whose layer is not "E expert FFNs" (the dense baseline, PEER)
        override this; the model and the training loop do not change. A router
        whose paper routes without capacity says so in its own config
        (``router.dropless``: hash, deepseek_moe); ``moe.dropless=true`` makes
        every router dropless.
        """
        from moebench.moe.block import MoEBlock
        from moebench.moe.expert_kinds import build_experts

        E = moe_cfg.num_experts
        router = cls(router_cfg, model_cfg.d_model, E, data)
        if router_cfg.freeze:  # no gradient: no optimizer update, weight decay included
            router.requires_grad_(False)
        return MoEBlock(
            router=router,
            experts=build_experts(model_cfg, moe_cfg),  # after the router: the seed's init order
            k=router_cfg.k,
            capacity_factor=moe_cfg.capacity_factor,
            eval_capacity_factor=moe_cfg.eval_capacity_factor,
            dropless=is_dropless(router_cfg, moe_cfg),
            drop_policy=moe_cfg.drop_policy,
            routing_groups=block_routing_groups(cls, router_cfg, moe_cfg),
        )

    @classmethod
    def sharded_experts(cls, router_cfg: RouterConfig, moe_cfg: MoEConfig) -> tuple[int, str]:
        """The experts of a layer that expert parallelism shards, and the
        config that sets their number (for the message when P does not divide it)."""
        return moe_cfg.num_experts, f"moe.num_experts={moe_cfg.num_experts}"

    def finish_step(self, sum_over_ranks: Callable[[Tensor], Tensor]) -> None:
        """Move the router's state (buffers moved by the routing, not by
        gradients: DeepSeek's balancing bias, k-means' centroids, RL-R's
        moving-average baseline) once per training step, by what this step's
        training forwards gathered; train.py calls it after the step's last
        backward. ``sum_over_ranks`` adds a statistic up over the processes of
        expert parallelism (itself on one process), so every process moves its
        replica of the state alike, by the whole global batch, as one process
        moves it over the step's micro-batches. Routers without such state
        have nothing to do."""

    def flops_per_token(self) -> dict[str, float]:
        """Forward FLOPs of the routing decision per token: the gate's matmul."""
        d_model = self.gate.in_features
        return {"router": 2.0 * d_model * self.num_experts}

    def gate_logits(self, x_TD: Tensor) -> Tensor:
        return float32_gate(x_TD, self.gate.weight)

    def forward(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        out = self.route(x_TD, ctx)
        if out.logits_TE is not None:
            out.aux_losses.update(stability_losses(out.logits_TE, self.cfg))
        return out

    def route(self, x_TD: Tensor, ctx: RouterContext) -> RouterOutput:
        raise NotImplementedError


def block_routing_groups(router_cls: type[Router], router_cfg: RouterConfig, moe_cfg: MoEConfig) -> str:
    """``moe.routing_groups`` as the block applies it: ``auto`` becomes
    ``position_if_causal`` for a configuration whose routing would let a
    position see later ones (moe/grouping.py, :func:`needs_position_groups`), else ``all``."""
    from moebench.moe.grouping import needs_position_groups

    if moe_cfg.routing_groups != "auto":
        return moe_cfg.routing_groups
    return "position_if_causal" if needs_position_groups(router_cls, router_cfg, moe_cfg) else "all"


def is_dropless(router_cfg: RouterConfig, moe_cfg: MoEConfig) -> bool:
    """No capacity: ``moe.dropless``, or a router whose paper has none
    (``router.dropless``: hash, deepseek_moe)."""
    return moe_cfg.dropless or getattr(router_cfg, "dropless", False)


class TrainingWork:
    """FLOPs a router's training forward spends beyond its evaluation forward
    (BASE's auction rounds, S-BASE's Sinkhorn iterations), summed as executed
    until read: the router's ``training_only_flops_per_token`` (the optional
    :class:`moebench.metrics.flops.TrainingOnlyCost`) returns :meth:`per_token`.
    Plain Python numbers: the loops that produce them already wait for the device."""

    def __init__(self, name: str) -> None:
        self.name, self.flops, self.tokens = name, 0.0, 0

    def add(self, flops: float, tokens: int) -> None:
        self.flops += flops
        self.tokens += tokens

    def per_token(self) -> dict[str, float]:
        """The work per routed token since the last read; then starts again."""
        per_token = self.flops / self.tokens if self.tokens else 0.0
        self.flops, self.tokens = 0.0, 0
        return {self.name: per_token}


def float32_gate(x_TD: Tensor, weight_ND: Tensor) -> Tensor:
    """``x W^T`` in (at least) float32 whatever the model's dtype, under autocast too.

    Casting the operands is not enough: ``torch.autocast`` runs a matrix
    product in its low-precision dtype whatever the inputs' dtype, so the
    product runs with autocast disabled. Switch Transformer's selective
    precision (Fedus et al. 2021, section 2.4): the router in float32, the rest
    of the model in bfloat16. Every gate uses it; ``x_TD`` may have more
    leading dimensions.
    """
    dtype = torch.promote_types(x_TD.dtype, torch.float32)
    with torch.autocast(x_TD.device.type, enabled=False):
        return nn.functional.linear(x_TD.to(dtype), weight_ND.to(dtype))


def z_loss(logits_TE: Tensor) -> Tensor:
    """Router z-loss, ST-MoE (Zoph et al. 2022) eq. 5: mean_t logsumexp(x_t)^2."""
    return torch.logsumexp(logits_TE, dim=-1).square().mean()


def routing_entropy(logits_TE: Tensor) -> Tensor:
    """Mean over tokens of the entropy of the routing distribution (nats)."""
    logp = torch.log_softmax(logits_TE, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def stability_losses(logits_TE: Tensor, cfg: RouterConfig) -> dict[str, Tensor]:
    losses: dict[str, Tensor] = {}
    if cfg.z_loss_coef > 0:
        losses["z_loss"] = cfg.z_loss_coef * z_loss(logits_TE)
    if cfg.entropy_coef != 0:
        losses["entropy"] = cfg.entropy_coef * routing_entropy(logits_TE)
    return losses


def sparse_from_topk(
    probs_TE: Tensor, weights_TK: Tensor, experts_TK: Tensor
) -> SparseRouting:
    """Flatten a ``[T, K]`` top-k choice into the assignment list.

    Assignments are listed choice-major (all first choices, then all second
    choices) so ``choice_A`` is simply the column index.
    """
    T, K = experts_TK.shape
    token_idx_A = torch.arange(T, device=probs_TE.device).repeat(K)
    expert_idx_A = experts_TK.t().reshape(-1)
    choice_A = torch.arange(K, device=probs_TE.device).repeat_interleave(T)
    score_A = probs_TE.detach().gather(1, experts_TK).t().reshape(-1)
    return SparseRouting(
        token_idx_A=token_idx_A,
        expert_idx_A=expert_idx_A,
        weight_A=weights_TK.t().reshape(-1),
        choice_A=choice_A,
        score_A=score_A,
    )


def one_expert_each(expert_T: Tensor) -> SparseRouting:
    """Each token to one given expert with weight 1: routing by a fixed rule
    rather than a gate (hash, k-means, the oracle), so no score to rank by."""
    ones_T = torch.ones(expert_T.numel(), device=expert_T.device)
    return SparseRouting(
        token_idx_A=torch.arange(expert_T.numel(), device=expert_T.device),
        expert_idx_A=expert_T,
        weight_A=ones_T,
        choice_A=torch.zeros_like(expert_T),
        score_A=ones_T,
    )

