"""Per-setup summaries over seeds, and ranks that show overlapping results as ties.

The rule, stated in every report (:data:`RANK_RULE`): setups are sorted by
their mean quality over seeds (best first, per the task's
``higher_is_better``); a setup's rank is 1 + the number of setups clearly
better than it, those whose 95% confidence interval lies wholly on the
better side of its own (so 1, 1, 3 where two tie and a third is clearly
behind both), and never better than the rank of the setup above it. Ties do
not chain: a setup that overlaps its neighbour but is clearly behind the
leader does not share the leader's rank. With one seed the interval is
unknown, and nothing is clearly better or worse than it. The dense baselines and the oracle router are
reference rows, not ranked (:data:`REFERENCE_ROUTERS`); so is a leaky setup,
one whose measured ``causal_leak`` shows that a position saw later tokens of
its sequence (moebench/metrics/causality.py): its quality is not a fair number.
``below_count_models`` is False here; the guard (guard.py) sets it, and
takes the rank, where a setup is not better than counting.
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

RANK_RULE = ("Ranked by mean quality over seeds; a router's rank is 1 + the number of routers "
             "clearly better than it (95% confidence intervals, Student t over seeds, that do not "
             "overlap), and never better than the rank above it, so overlapping results are ties; "
             "with one seed the interval is unknown and nothing is clearly better or worse.")
# Not routing algorithms competing on equal terms: the dense baselines do not
# route, and the oracle routes by the true cluster, which no router can see.
REFERENCE_ROUTERS = ("dense", "dense_total", "oracle")
# A causal_leak (max logit change, evaluation mode) above float noise.
LEAK_TOLERANCE = 1e-4
# What the routing would cost under expert parallelism on moe.comm_ranks
# processes (moebench/metrics/communication.py); records made before moebench
# measured it lack these, and the config key with them.
COMM_METRICS = ("comm_bytes_per_token", "comm_remote_share", "comm_rank_load_max_over_mean")
COMM_RANKS = "config.moe.comm_ranks"
# Metrics averaged over seeds beside the quality, in the order reports show them.
SUMMARY_METRICS = ("drop_rate", "load_cv", "load_max_over_mean", *COMM_METRICS, "flops_per_token",
                   "active_params", "budget_spent", "train_tokens_per_s")


def mean_ci(values: pd.Series, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (NaN for one value)."""
    values = values.dropna()
    n = len(values)
    if n < 2:
        return (float(values.mean()) if n else math.nan), math.nan
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean()), float(half)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, setup) of completed ``runs``: seeds, quality mean and
    CI, the other metrics' means (each over the seeds that recorded it), and
    ``comm_ranks``, the P of its communication metrics (missing where its
    records predate them); ranked within each task (see module doc)."""
    # One run per seed: the same seed run twice (say, on two machines) is one
    # sample, and counting it twice would narrow the interval.
    runs = runs.sort_values("run_id").drop_duplicates(["task", "setup", "seed"])
    rows = []
    for (task, setup), group in runs.groupby(["task", "setup"], sort=True):
        first = group.iloc[0]
        mean, ci = mean_ci(group["quality"])
        leaky = "causal_leak" in group and bool((group["causal_leak"] > LEAK_TOLERANCE).any())
        rows.append({"task": task, "setup": setup, "router": first["router"],
                     "variant": first["variant"], "quality_metric": first["quality_metric"],
                     "higher_is_better": bool(first["higher_is_better"]), "leaky": leaky,
                     "reference": first["router"] in REFERENCE_ROUTERS or leaky, "below_count_models": False,
                     "seeds": len(group),
                     "quality_mean": mean, "quality_ci95": ci,
                     **{m: group[m].mean() if m in group else math.nan for m in SUMMARY_METRICS},
                     "comm_ranks": group[COMM_RANKS].max() if COMM_RANKS in group else math.nan})
    columns = ["task", "rank", "setup", "router", "variant", "reference", "leaky", "below_count_models", "seeds",
               "quality_metric",
               "higher_is_better", "quality_mean", "quality_ci95", *SUMMARY_METRICS, "comm_ranks"]
    if not rows:
        return pd.DataFrame(columns=columns)
    summary = pd.concat([_rank_task(frame) for _, frame in pd.DataFrame(rows).groupby("task")])
    return summary[columns].astype({"comm_ranks": "Int64"}).reset_index(drop=True)


def _rank_task(frame: pd.DataFrame) -> pd.DataFrame:
    """Ranked setups best first, then the reference rows (rank missing)."""
    better_high = frame["higher_is_better"].iloc[0]
    ordered = frame.sort_values(["reference", "quality_mean", "setup"],
                                ascending=[True, not better_high, True], na_position="last")
    ranks: list[float] = []
    above: list = []  # the ranked setups so far, best first
    for row in ordered.itertuples():
        if row.reference:
            ranks.append(math.nan)
            continue
        clearly_better = sum(not overlap(a.quality_mean, a.quality_ci95, row.quality_mean, row.quality_ci95)
                             for a in above)
        ranks.append(max(1 + clearly_better, ranks[-1] if above else 1))
        above.append(row)
    return ordered.assign(rank=pd.array(ranks, dtype="Int64"))


def overlap(mean_a: float, ci_a: float, mean_b: float, ci_b: float) -> bool:
    """Whether the intervals mean +- ci overlap; an unknown interval overlaps all."""
    if math.isnan(ci_a) or math.isnan(ci_b):
        return True
    return abs(mean_a - mean_b) <= ci_a + ci_b
