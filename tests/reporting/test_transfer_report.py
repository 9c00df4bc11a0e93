"""The fine-tuning gap report from hand-made records: the table's qualities,
the paired gaps to dense (active) and their verdicts in both phases, seeds
missing on either side, and the sweep that makes the records."""

import math

import pandas as pd
import pytest
from omegaconf import OmegaConf

from moebench.commands.report import main
from moebench.compose import CONF_DIR, load_config
from moebench.errors import ConfigError
from moebench.reporting.ranking import mean_ci
from moebench.reporting.transfer import FILES, transfer_summary, transfer_table
from moebench.results import load_results

TRANSFER = {"transfer": {"pretrain_task": {"name": "wikitext2"}}}
DENSE = {"router": {"name": "dense", "k": 1, "params": "active"}, **TRANSFER}
DENSE_BPC, DENSE_PERPLEXITY = (2.50, 2.52, 2.48), (400.0, 410.0, 390.0)  # per seed
# Per router, per seed: (fine-tuned bpc, pretraining perplexity) minus dense (active)'s.
GAPS = {"top1": ((0.05, 0.06, 0.04), (-20.0, -22.0, -18.0)),  # better pretrained, worse fine-tuned
        "top2": ((-0.05, -0.04, -0.06), (-10.0, -12.0, -8.0)),  # better in both
        "hash": ((0.01, -0.02, 0.01), (5.0, -5.0, 1.0)),  # no difference in either
        "dense_total": ((-0.10, -0.11, -0.09), (-50.0, -55.0, -45.0))}


def sweep(make_record, skip: tuple[tuple[str, int], ...] = ()) -> list[dict]:
    """The records of the transfer sweep on 3 seeds, but the (router, seed) of ``skip``."""
    made = []
    for seed in range(3):
        if ("dense", seed) not in skip:
            made.append(make_record("dense", "shakespeare_char", seed, DENSE_BPC[seed], config=DENSE,
                                    pretrain_quality=DENSE_PERPLEXITY[seed]))
        made += [make_record(router, "shakespeare_char", seed, DENSE_BPC[seed] + bpc[seed], config=TRANSFER,
                             pretrain_quality=DENSE_PERPLEXITY[seed] + perplexity[seed])
                 for router, (bpc, perplexity) in GAPS.items() if (router, seed) not in skip]
    return made


def summary_of(results_dir, records: list[dict]) -> pd.DataFrame:
    return transfer_summary(load_results(results_dir(*records)).runs).set_index("variant")


def test_the_table_has_each_routers_qualities_and_paired_gaps(make_record, results_dir):
    summary = summary_of(results_dir, sweep(make_record))
    assert list(summary.index) == ["dense (active)", "dense_total", "top2", "hash", "top1"]  # best bpc first
    for router, (bpc, perplexity) in GAPS.items():
        row = summary.loc[router]
        for prefix, dense, gaps in (("", DENSE_BPC, bpc), ("pretrain_", DENSE_PERPLEXITY, perplexity)):
            own = pd.Series([d + g for d, g in zip(dense, gaps)])
            assert (row[f"{prefix}quality_mean"], row[f"{prefix}quality_ci95"]) == pytest.approx(mean_ci(own))
            assert row[f"{prefix}gap_seeds"] == 3
            assert (row[f"{prefix}gap_mean"], row[f"{prefix}gap_ci95"]) == pytest.approx(mean_ci(pd.Series(gaps)))
    verdicts = summary[["verdict", "pretrain_verdict"]].to_dict("index")
    assert verdicts["top1"] == {"verdict": "worse", "pretrain_verdict": "better"}  # lower is better in both
    assert verdicts["top2"] == {"verdict": "better", "pretrain_verdict": "better"}
    assert verdicts["hash"] == {"verdict": "no difference", "pretrain_verdict": "no difference"}
    assert verdicts["dense (active)"] == {"verdict": "", "pretrain_verdict": ""}
    dense = summary.loc["dense (active)"]
    assert (dense["pretrain_task"], dense["pretrain_metric"]) == ("wikitext2", "perplexity")
    assert dense["gap_seeds"] == 0 and math.isnan(dense["gap_mean"])


def test_missing_seeds_pair_only_where_both_ran(make_record, results_dir):
    records = sweep(make_record, skip=(("dense", 1), ("top2", 0), ("top2", 2)))
    records.append(make_record("top2", "shakespeare_char", 2, float("nan"), status="diverged", config=TRANSFER))
    summary = summary_of(results_dir, records)
    top1, top2 = summary.loc["top1"], summary.loc["top2"]
    assert (top1["seeds"], top1["gap_seeds"]) == (3, 2)  # dense (active) lacks seed 1
    assert top1["gap_mean"] == pytest.approx(0.045) and top1["verdict"] == "no difference"
    assert (top2["seeds"], top2["gap_seeds"], top2["verdict"]) == (1, 0, "no paired seeds")
    assert math.isnan(top2["quality_ci95"])
    table = transfer_table(summary.reset_index()).set_index("router")
    assert table.loc["top2", "bpc (mean ± 95% CI)"].endswith("n/a")


def test_report_command_writes_the_table_verdicts_and_left_out_runs(make_record, results_dir, tmp_path):
    records = sweep(make_record, skip=(("hash", 2),))
    records.append(make_record("hash", "shakespeare_char", 2, float("nan"), status="diverged", config=TRANSFER))
    out = tmp_path / "reports"
    main(["--transfer", "--results", str(results_dir(*records)), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    text = (out / "transfer.md").read_text()
    assert "- top1: after fine-tuning, worse (+0.050 ± 0.025 bpc, 3 paired seeds); in pretraining, better" in text
    assert "Of 3 routers (the dense baselines aside), after fine-tuning: 1 worse than dense (active), 1 better" in text
    assert "Left out (not completed): hash seed 2 (diverged)." in text
    assert f"Records: {len(records)} (no commit recorded: {len(records)}); 0 with uncommitted changes" in text
    csv = pd.read_csv(out / "transfer.csv")
    assert set(csv["variant"]) == {"dense (active)", "dense_total", "top1", "top2", "hash"}


def test_two_setups_of_one_router_are_refused(make_record, results_dir):
    records = sweep(make_record) + [make_record("top1", "shakespeare_char", 0, 2.6,
                                                config={**TRANSFER, "moe": {"capacity_factor": 2.0}})]
    with pytest.raises(ConfigError, match="one config per task and router"):
        summary_of(results_dir, records)


def test_records_without_a_pretraining_task_are_refused(make_record, results_dir):
    with pytest.raises(ConfigError, match="one pretraining task"):
        summary_of(results_dir, [make_record("top1", "shakespeare_char", 0, 2.6)])


def test_the_sweep_pretrains_and_fine_tunes_at_the_leaderboards_budgets():
    params = OmegaConf.load(CONF_DIR / "experiment" / "transfer_gap.yaml").hydra.sweeper.params
    assert set(params.router.split(",")) == {"top1", "top2", "hash", "expert_choice", "deepseek_moe",
                                             "dense", "dense_total"}
    assert params.seed.split(",") == ["0", "1", "2"]
    cfg = load_config("+experiment=transfer_gap")
    leaderboard = {task: load_config("+experiment=leaderboard", f"+cpu_task={task}").trainer
                   for task in ("wikitext2", "shakespeare_char")}
    assert (cfg.transfer.pretrain_task.name, cfg.task.name) == ("wikitext2", "shakespeare_char")
    assert cfg.transfer.pretrain_train_flops == leaderboard["wikitext2"].max_train_flops
    assert cfg.trainer == leaderboard["shakespeare_char"]  # the cpu tier at Tiny Shakespeare's budget
    assert (cfg.moe.routing_groups, cfg.results_dir) == ("auto", "results/transfer")
    assert load_config("+experiment=transfer_gap", "router=dense").router.params == "active"
