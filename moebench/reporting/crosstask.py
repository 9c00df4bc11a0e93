"""Which router to use: each router's mean normalized rank across tasks, and its wins over dense (active).

The mean normalized rank summarizes a benchmark of many tasks as MTEB and
HELM do (HELM's mean win rate is one minus it, ties aside). Per task, the
ranked setups (the leaderboard's ranked rows: no reference rows, no leaky
ones, no table the guard left unranked; with them the setups the guard
found below the count models in a ranked table, which leaving out would
flatter) are ordered by mean quality over
seeds (ties share the average rank) and the rank is scaled to [0, 1],
(rank - 1) / (n - 1) among the task's n ranked setups: 0 best, 1 worst. A
router's score is the mean of that over the tasks where it is ranked; a
setup is the same router across tasks when its name is the same. Only
tasks with at least two ranked setups enter.

Its uncertainty is a bootstrap over seeds: each of
:data:`BOOTSTRAP_REPLICATES` replicates resamples each task's seeds with
replacement (the same draw for every setup of the task: they are paired by
seed), recomputes each setup's mean over its drawn seeds, re-ranks and
re-averages; the interval is the 2.5th to 97.5th percentile of the
replicates. The generator is seeded per task by :data:`BOOTSTRAP_SEED` and
the task's name, so reruns give the same numbers.

Wins over dense (active): the tasks where the router's paired interval
(:mod:`.paired`) lies on the better side of 0, out of the entered tasks
where it was compared with dense (active) on at least two seeds.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from moebench.reporting.paired import AGAINST_DENSE, BETTER, NO_DIFFERENCE, WORSE

BOOTSTRAP_REPLICATES = 1000
BOOTSTRAP_SEED = 0
CROSS_TASK_COLUMNS = ["setup", "tasks", "mean_normalized_rank", "rank_low", "rank_high",
                      "wins_over_dense", "tasks_vs_dense"]
CROSS_TASK_RULE = ("Mean normalized rank (as MTEB and HELM summarize): per task, the ranked routers "
                   "ordered by mean quality (ties share the average rank), the rank scaled to [0, 1] "
                   "(0 best, 1 worst), averaged over the tasks where the router is ranked; reference "
                   "and leaky rows and tables not past the count models are left out (a router below the "
                   "count models in a ranked table enters by its mean). Interval: 2.5th "
                   f"to 97.5th percentile of {BOOTSTRAP_REPLICATES} bootstrap replicates over seeds (each "
                   "task's seeds resampled with replacement, the same draw for all its routers, then "
                   "re-ranked). Tasks better than dense (active): those where the router's paired 95% "
                   "interval lies on the better side of 0, of those where it was compared on at least two "
                   "seeds.")


@dataclass(frozen=True)
class CrossTask:
    """The cross-task summary: one row per router (:data:`CROSS_TASK_COLUMNS`,
    best first), the tasks that entered it, and the others with the reason."""

    table: pd.DataFrame
    tasks: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...]


def cross_task_summary(runs: pd.DataFrame, summary: pd.DataFrame, paired: pd.DataFrame) -> CrossTask:
    """The cross-task summary of completed ``runs``, their guarded
    ``summary`` and their :func:`~moebench.reporting.paired.paired_differences`."""
    per_seed = runs.sort_values("run_id").drop_duplicates(["task", "setup", "seed"])
    ranks_by_task, left_out = {}, []
    for task, table in summary.groupby("task", sort=True):
        compared = table[~table["reference"].astype(bool)]
        entered = compared[compared["rank"].notna() | compared["below_count_models"].astype(bool)]
        if len(entered) < 2:
            unranked = not compared.empty and entered.empty  # the guard's mark
            left_out.append((task, "not past the count models" if unranked
                             else "fewer than two ranked routers"))
            continue
        setups = sorted(entered["setup"])
        quality_sr = (per_seed[per_seed["task"] == task]
                      .pivot(index="setup", columns="seed", values="quality").reindex(setups).to_numpy())
        means_br = weighted_means(quality_sr, seed_weights(task, quality_sr.shape[1]))
        higher = bool(table["higher_is_better"].iloc[0])
        ranks_by_task[task] = pd.DataFrame(normalized_ranks(means_br, higher), columns=setups)
    tasks = tuple(ranks_by_task)
    if not tasks:
        return CrossTask(pd.DataFrame(columns=CROSS_TASK_COLUMNS), tasks, tuple(left_out))
    setups = sorted({setup for ranks in ranks_by_task.values() for setup in ranks.columns})
    ranks_bst = np.stack([ranks.reindex(columns=setups).to_numpy() for ranks in ranks_by_task.values()],
                         axis=-1)  # replicate (0: the estimate), setup, task; NaN: not ranked there
    present_bst = ~np.isnan(ranks_bst)
    counts_bs = present_bst.sum(axis=-1)
    mean_bs = np.divide(np.where(present_bst, ranks_bst, 0).sum(axis=-1), counts_bs,
                        out=np.full(counts_bs.shape, np.nan), where=counts_bs > 0)
    low_s, high_s = np.nanpercentile(mean_bs[1:], [2.5, 97.5], axis=0)
    vs_dense = paired[(paired["against"] == AGAINST_DENSE) & paired["task"].isin(tasks)
                      & paired["verdict"].isin([BETTER, WORSE, NO_DIFFERENCE])]  # with an interval
    wins = vs_dense[vs_dense["verdict"] == BETTER]["setup"].value_counts()
    compared = vs_dense["setup"].value_counts()
    table = pd.DataFrame({
        "setup": setups, "tasks": counts_bs[0], "mean_normalized_rank": mean_bs[0],
        "rank_low": low_s, "rank_high": high_s,
        "wins_over_dense": [int(wins.get(s, 0)) for s in setups],
        "tasks_vs_dense": [int(compared.get(s, 0)) for s in setups]})
    table = table.sort_values(["mean_normalized_rank", "setup"]).reset_index(drop=True)
    return CrossTask(table[CROSS_TASK_COLUMNS], tasks, tuple(left_out))


def seed_weights(task: str, seeds: int) -> np.ndarray:
    """How often each of a task's ``seeds`` is drawn: row 0 once each (the
    estimate), then one row per bootstrap replicate, seeds drawn with
    replacement by a generator seeded with :data:`BOOTSTRAP_SEED` and the
    task's name (so a task's draws do not depend on the other tasks).
    Shape (1 + replicates, seeds)."""
    rng = np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(task.encode())])
    draws_bs = rng.integers(0, seeds, size=(BOOTSTRAP_REPLICATES, seeds))
    return np.vstack([np.ones(seeds, dtype=int), (draws_bs[:, :, None] == np.arange(seeds)).sum(axis=1)])


def weighted_means(quality_sr: np.ndarray, weights_bs: np.ndarray) -> np.ndarray:
    """Per replicate b and setup r, the mean of r's qualities over the seeds
    with weight w_bs (how often replicate b drew seed s); NaN where b drew
    none of r's seeds. Shape (replicates, setups)."""
    present_sr = ~np.isnan(quality_sr)
    totals_rb = np.where(present_sr, quality_sr, 0.0) @ weights_bs.T
    counts_rb = present_sr.astype(float) @ weights_bs.T
    means_rb = np.divide(totals_rb, counts_rb, out=np.full(totals_rb.shape, np.nan), where=counts_rb > 0)
    return means_rb.T


def normalized_ranks(means_br: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Per replicate, the setups' ranks by mean (1 best, ties averaged)
    scaled to [0, 1] among the setups with a mean; NaN where fewer than two have one."""
    ranks_br = stats.rankdata(-means_br if higher_is_better else means_br, axis=1, nan_policy="omit")
    n_b = np.sum(~np.isnan(means_br), axis=1, keepdims=True)
    return np.divide(ranks_br - 1, n_b - 1, out=np.full(ranks_br.shape, np.nan), where=n_b > 1)


def cross_task_table(cross_task: CrossTask) -> pd.DataFrame:
    """The summary as the strings the report shows, best first."""
    table = cross_task.table
    return pd.DataFrame({
        "router": table["setup"],
        "tasks": table["tasks"].astype(str),
        "mean normalized rank [95% bootstrap interval]": [
            f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in
            zip(table["mean_normalized_rank"], table["rank_low"], table["rank_high"])],
        "tasks better than dense (active)": [f"{w} of {n}" if n else "not compared" for w, n in
                                             zip(table["wins_over_dense"], table["tasks_vs_dense"])],
    })


def cross_task_notes(cross_task: CrossTask) -> list[str]:
    """The method, and which tasks entered and which did not, and why."""
    notes = [CROSS_TASK_RULE, f"Tasks entered: {', '.join(cross_task.tasks) or 'none'}."]
    if cross_task.left_out:
        notes.append("Left out: " + "; ".join(f"{task} ({why})" for task, why in cross_task.left_out) + ".")
    return notes
