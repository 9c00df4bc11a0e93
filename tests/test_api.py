"""The Python API (moebench/api.py): one call builds any router's layer for
one's own model, one call runs the benchmark, and the README's example runs."""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import moebench
from moebench import MoE, load_results, run_one
from moebench.config import TrainerConfig
from moebench.errors import ConfigError
from moebench.routers import ROUTERS
from moebench.train import make_optimizer

README = Path(__file__).resolve().parents[1] / "README.md"
DIM, VOCAB = 32, 50
# The oracle routes by the synthetic task's true clusters, which no model of one's own has.
LAYER_ROUTERS = [name for name in ROUTERS.names() if name != "oracle"]


class ToyModel(nn.Module):
    """Embedding -> MoE -> head: an MoE layer in a model of one's own."""

    def __init__(self, router: str) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.moe = MoE(DIM, router=router, vocab_size=VOCAB)
        self.head = nn.Linear(DIM, VOCAB)

    def loss(self, ids_BL, targets_BL):
        x_BLD = self.emb(ids_BL)
        y_BLD, aux_loss, stats = self.moe(x_BLD, token_ids=ids_BL)
        assert y_BLD.shape == x_BLD.shape
        assert aux_loss.dim() == 0 and torch.isfinite(aux_loss)
        token_losses_T = F.cross_entropy(self.head(x_BLD + y_BLD).flatten(0, 1), targets_BL.flatten(),
                                         reduction="none")
        loss = token_losses_T.mean() + aux_loss
        if stats is not None and stats.on_token_loss is not None:  # RL-R, as MoE's docstring says
            counted_T = torch.ones_like(token_losses_T, dtype=torch.bool)
            loss = loss + sum(stats.on_token_loss(token_losses_T.detach(), counted_T).values())
        return loss


def nonzero(grad):
    return grad is not None and bool((grad.coalesce().values() if grad.is_sparse else grad).any())


@pytest.mark.parametrize("router", LAYER_ROUTERS)
def test_every_router_trains_in_a_model_of_ones_own(router):
    torch.manual_seed(0)
    model = ToyModel(router)
    ids_BL, targets_BL = torch.randint(VOCAB, (4, 16)), torch.randint(VOCAB, (4, 16))
    # The benchmark's optimizer: PEER's tables get sparse gradients, which Adam refuses.
    optimizer = make_optimizer(model, TrainerConfig(lr=1e-2))
    losses = []
    for step in range(5):
        optimizer.zero_grad()
        loss = model.loss(ids_BL, targets_BL)
        loss.backward()
        if step == 0:  # gradients reach the router's parameters and the experts, whatever they are
            assert [n for n, p in model.moe.named_parameters() if not nonzero(p.grad)] == []
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_aux_loss_sums_the_routers_losses_and_options_reach_the_router():
    moe = MoE(DIM, router="top1", z_loss_coef=1e-3)
    _, aux_loss, stats = moe(torch.randn(64, DIM))
    assert set(stats.aux_losses) == {"balance", "z_loss"}
    assert aux_loss > 0 and torch.allclose(aux_loss, sum(stats.aux_losses.values()))
    assert MoE(DIM, router="dense")(torch.randn(3, DIM)).aux_loss == 0  # no router, no loss


def test_an_option_is_the_routers_own_where_it_has_one_else_the_blocks():
    expert_choice = MoE(DIM, router="expert_choice", capacity_factor=1.0).layer
    assert expert_choice.router.cfg.capacity_factor == 1.0 and expert_choice.capacity_factor == 1.25
    top1 = MoE(DIM, router="top1", capacity_factor=2.0, dropless=True).layer
    assert top1.capacity_factor == 2.0 and top1.dropless
    # Defaults are the router's YAML: dense_softmax's k is moe.num_experts there.
    dense_softmax = MoE(DIM, num_experts=4, router="dense_softmax").layer
    assert dense_softmax.k == 4 and dense_softmax.experts.num_experts == 4
    assert dense_softmax.experts.w_out_EFD.shape == (4, 4 * DIM, DIM)  # hidden: 4 * dim


def test_causal_routes_by_position_so_no_token_sees_later_ones():
    x_BLD = torch.randn(8, 6, DIM)
    later_changed = x_BLD.clone()
    later_changed[:, -1] += 1.0

    def earlier_outputs_move(causal: bool) -> bool:
        torch.manual_seed(0)
        moe = MoE(DIM, router="expert_choice", causal=causal)
        return not torch.equal(moe(x_BLD).y[:, :-1], moe(later_changed).y[:, :-1])

    assert earlier_outputs_move(causal=False)  # expert choice compares tokens: the leak is real
    assert not earlier_outputs_move(causal=True)
    with pytest.raises(ValueError, match=r"a causal MoE needs \[batch, seq, dim\]"):
        MoE(DIM, router="expert_choice", causal=True)(torch.randn(6, DIM))


def test_hash_routing_maps_the_token_ids_it_is_given():
    moe = MoE(DIM, router="hash", vocab_size=VOCAB)
    ids_BL = torch.randint(VOCAB, (4, 16))
    top_T = moe(torch.randn(4, 16, DIM), token_ids=ids_BL).stats.top_expert_T
    assert torch.equal(top_T, moe.layer.router.expert_V[ids_BL.flatten()])


@pytest.mark.parametrize("kwargs, message", [
    ({"router": "nope"}, r"^router.name='nope' is not valid; allowed: base, .*top1, top2, top_p$"),
    ({"router": "top2", "foo": 3},
     r"^foo=3 is not valid; allowed: an option of router top2 \(k, .*second_policy.*\) or of the MoE block"),
    ({"capacity_factor": 0.0}, r"^moe.capacity_factor=0.0 is not valid; allowed: a finite number > 0$"),
    ({"router": "top2", "second_policy": "first"}, r"^router.second_policy='first' is not valid; allowed: "),
    ({"router": "top2", "k": "two"}, r"^router.k='two' is not valid; allowed: a value of type int$"),
    ({"activation": "tanh"}, r"^model.activation='tanh' is not valid; allowed: "),
])
def test_bad_input_fails_in_one_line_naming_key_value_and_allowed_values(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        MoE(DIM, **kwargs)
    assert "\n" not in str(error.value)
    if "k" not in kwargs:  # Hydra's own type check explains itself as a plain ValueError
        assert isinstance(error.value, ConfigError)


def test_run_one_writes_the_record_returns_it_and_load_results_reads_it(tmp_path):
    record = run_one("trainer.max_steps=3", "task.oracle_baseline=false", results_dir=tmp_path)
    assert record["status"] == "completed" and record["metrics"]["steps"] == 3
    assert [p.stem for p in tmp_path.glob("*.json")] == [record["run_id"]]
    runs = load_results(tmp_path).runs
    assert list(runs["run_id"]) == [record["run_id"]] and runs["quality"][0] == record["metrics"]["quality"]
    again = run_one("trainer.max_steps=3", "task.oracle_baseline=false", results_dir=tmp_path)
    assert again["run_id"] == record["run_id"]  # completed already: not repeated


def test_the_readme_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("\n## Python API\n"):]
    section = section[:section.index("\n## ", 1)]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its results_dir, under tmp_path
    namespace: dict = {}
    exec(compile(example, "README.md (Python API)", "exec"), namespace)
    assert len(namespace["runs"]) == 1 and namespace["y"].shape == (4, 16, 64)


def test_import_moebench_is_cheap_and_exports_the_api():
    loaded = subprocess.run([sys.executable, "-c", "import sys, moebench; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "False"
    assert callable(moebench.run_one) and moebench.MoE is MoE  # not the modules moebench.run, .train
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        moebench.nope
