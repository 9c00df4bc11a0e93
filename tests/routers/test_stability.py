"""Stability options every router shares: float32 router (under bfloat16
autocast too), z-loss and entropy regularizer by config, and NaN/Inf steps
skipped, counted, and ending the run as diverged past trainer.max_skipped_share."""

import math

import pytest
import torch

from moebench.config import ModelConfig, MoEConfig
from moebench.routers import ROUTERS
from moebench.routers.base import DataStats, RouterContext, SoftRouting, routing_entropy, z_loss
from moebench.tasks.synthetic import SyntheticTask
from moebench.train import train

GATED = ["top2", "noisy_topk", "dense_softmax", "expert_choice", "base", "sbase", "rl", "soft"]


def test_z_loss_and_entropy_on_hand_logits():
    logits_TE = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # logsumexp per token: log 2 and log 4 (ST-MoE eq. 5 squares and averages them)
    assert math.isclose(float(z_loss(logits_TE)), (math.log(2) ** 2 + math.log(4) ** 2) / 2, rel_tol=1e-6)
    # routing distributions (1/2, 1/2) and (3/4, 1/4)
    h = (math.log(2) + -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / 2
    assert math.isclose(float(routing_entropy(logits_TE)), h, rel_tol=1e-6)


def make_router(name: str, **options):
    """The router of ``name``'s layer as a run builds it: 4 experts, width 16."""
    torch.manual_seed(0)
    cfg = ROUTERS.get(name).config_cls(name=name, **options)
    model = ModelConfig(name="test", d_model=16, d_ff=16, block_size=32)
    return ROUTERS.get(name).cls.build_layer(cfg, model, MoEConfig(num_experts=4), DataStats()).router


@pytest.mark.parametrize("name", GATED)
def test_every_router_computes_float32_logits_and_adds_the_configured_regularizers(name):
    router = make_router(name, z_loss_coef=0.01, entropy_coef=-0.1).train()
    out = router(torch.randn(32, 16, dtype=torch.bfloat16), RouterContext())
    assert out.logits_TE.dtype == torch.float32
    torch.testing.assert_close(out.aux_losses["z_loss"], 0.01 * z_loss(out.logits_TE))
    torch.testing.assert_close(out.aux_losses["entropy"], -0.1 * routing_entropy(out.logits_TE))


def routing_weights(out) -> torch.Tensor:
    routing = out.routing
    return routing.dispatch_GLN if isinstance(routing, SoftRouting) else routing.weight_A


@pytest.mark.parametrize("name", ["top1", *GATED])
def test_the_gate_stays_float32_under_bfloat16_autocast(name):
    # Switch's selective precision (section 2.4): autocast would run the gate's
    # matmul in bfloat16 whatever its operands' dtype.
    router = make_router(name)
    x_TD = torch.randn(32, 16)
    for training in (True, False):
        router.train(training)
        torch.manual_seed(1)
        reference = router(x_TD, RouterContext())
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = router(x_TD, RouterContext())
        assert out.logits_TE.dtype == torch.float32
        assert torch.equal(out.logits_TE, reference.logits_TE)
        assert torch.equal(routing_weights(out), routing_weights(reference))


class NaNOnSteps(SyntheticTask):
    """The synthetic task, with a NaN loss on the given training steps."""

    def __init__(self, cfg, nan_steps: set[int]) -> None:
        super().__init__(cfg.task, cfg.data, cfg.seed)
        self.nan_steps, self.train_batches = nan_steps, 0

    def get_batch(self, split, batch_size, generator):
        self.train_batches += split == "train"
        return super().get_batch(split, batch_size, generator)

    def token_losses(self, logits, batch):
        losses = super().token_losses(logits, batch)
        in_training = torch.is_grad_enabled()  # evaluation runs under no_grad
        return losses * float("nan") if in_training and self.train_batches - 1 in self.nan_steps else losses


TINY = ["trainer.max_steps=20", "trainer.batch_tokens=64", "trainer.eval_batches=1",
        "trainer.max_skipped_share=0.2", "model.d_model=16", "model.d_ff=16", "model.n_heads=2"]


def test_nan_steps_are_skipped_and_counted(make_config):
    cfg = make_config("router=top2", *TINY)
    result = train(cfg, NaNOnSteps(cfg, nan_steps={3, 7, 8}))
    assert result.status == "completed"
    assert result.metrics["skipped_steps"] == 3 and result.metrics["steps"] == 20
    assert all(torch.isfinite(p).all() for p in result.model.parameters())  # no NaN update applied


def test_skipping_more_than_the_share_ends_diverged(make_config):
    cfg = make_config("router=top2", *TINY)
    result = train(cfg, NaNOnSteps(cfg, nan_steps=set(range(5, 20))))
    # 20 * 0.2 = 4 skips allowed: the fifth, at step 9, ends the run.
    assert result.status == "diverged"
    assert result.metrics["skipped_steps"] == 5 and result.metrics["steps"] == 9
