"""A small pre-norm transformer (GPT-2 style, as in nanoGPT) whose FFNs plug in.

Causal for language modelling; bidirectional for masked LM. The token
embedding and output layer are a table and a full softmax tied to it, or an
adaptive input and an adaptive softmax (models/adaptive.py), which the task
asks for losses at the targets only.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moebench.config import ModelConfig
from moebench.metrics.flops import attention_flops, linear_flops
from moebench.models import ModelOutput
from moebench.models.ffn import FFNFactory
from moebench.models.adaptive import AdaptiveHead, AdaptiveInput
from moebench.moe.block import LayerStats
from moebench.routers.base import RouterContext


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool) -> None:
        super().__init__()
        self.n_heads, self.causal, self.dropout = cfg.n_heads, causal, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x_BLD: Tensor) -> Tensor:
        B, L, D = x_BLD.shape
        q, k, v = self.qkv(x_BLD).view(B, L, 3, self.n_heads, D // self.n_heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool, ffn: nn.Module) -> None:
        super().__init__()
        self.ln_attn, self.ln_ffn = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn, self.ffn = SelfAttention(cfg, causal), ffn
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x_BLD: Tensor, ctx: RouterContext) -> tuple[Tensor, LayerStats | None]:
        x_BLD = x_BLD + self.drop(self.attn(self.ln_attn(x_BLD)))
        y_BLD, stats = self.ffn(self.ln_ffn(x_BLD), ctx)
        return x_BLD + self.drop(y_BLD), stats


class Transformer(nn.Module):
    """``adaptive``: an adaptive input and softmax (built for this vocabulary
    and width) instead of a tied embedding table and full softmax."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, causal: bool, ffn: FFNFactory,
                 adaptive: tuple[AdaptiveInput, AdaptiveHead] | None = None) -> None:
        super().__init__()
        self.cfg, self.causal = cfg, causal
        # Modules are created, and initialized, in one fixed order: the random
        # stream then gives every run of a seed the same weights as before.
        self.tok_emb: nn.Embedding | AdaptiveInput
        self.head: nn.Linear | AdaptiveHead
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model) if adaptive is None else adaptive[0]
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, causal, ffn(i)) for i in range(cfg.n_layers))
        self.ln_out = nn.LayerNorm(cfg.d_model)
        if adaptive is None:
            self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
            self.head.weight = self.tok_emb.weight  # weight tying (Press & Wolf 2017), as nanoGPT
            nn.init.normal_(self.tok_emb.weight, std=0.02)
        else:
            self.head = adaptive[1]
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def forward(self, idx_BL: Tensor, ctx: RouterContext) -> ModelOutput:
        B, L = idx_BL.shape
        ctx = replace(ctx, causal=self.causal)  # the FFN layers' routing groups may depend on it
        x = self.tok_emb(idx_BL) + self.pos_emb(torch.arange(L, device=idx_BL.device))
        stats = []
        for block in self.blocks:
            x, layer_stats = block(x, ctx)
            stats.append(layer_stats)
        hidden_BLD = self.ln_out(x)
        if isinstance(self.head, AdaptiveHead):
            self.head.start(B * L)
            return ModelOutput(None, stats, hidden=hidden_BLD, head=self.head)
        return ModelOutput(self.head(hidden_BLD), stats)

    def ffn_layers(self) -> list[nn.Module]:
        return [block.ffn for block in self.blocks]

    def base_flops_per_token(self, context: int) -> dict[str, float]:
        """Attention and the head; an adaptive input's projections and an
        adaptive head as executed in the last forward (the head: the losses
        asked of it since then), per token of that forward."""
        if isinstance(self.head, AdaptiveHead):
            flops = {"embedding": self.tok_emb.flops_per_token(), "head": self.head.flops_per_token()}
        else:
            flops = {"head": linear_flops(self.cfg.d_model, self.head.out_features)}
        for part, value in attention_flops(self.cfg.d_model, context).items():
            flops[part] = self.cfg.n_layers * value
        return flops
