"""Paired differences: every router of a task against dense (active) and against the best router.

Every setup of a task sees the same data order for a given seed, so two
setups are compared seed by seed (Student's paired t): on the n seeds both
completed, the per-seed differences d_i = quality(router) - quality(baseline),
their mean and its 95% confidence interval, mean +- t_{0.975, n-1} s_d / sqrt(n)
(s_d: the differences' standard deviation). Pairing removes what a seed does
to every setup alike (data order, initialisation), so the interval is
narrower than the unpaired ones of the ranking. A seed only one of the two
ran is not paired. The verdict is direction-aware: ``better`` where the
interval lies wholly on the better side of 0 (above 0 where higher is
better, below where lower is), ``worse`` where wholly on the other side,
``no difference`` where it holds 0; one paired seed gives no interval.

Compared: the setups of completed runs that are neither reference rows nor
leaky (:func:`moebench.reporting.ranking.summarize`). The baselines: the
table's dense (active) setup (the best of them by mean where there are
several, as the guard picks), and the table's best setup (the first ranked,
best by mean). A table the guard did not rank (not past the count models)
keeps its differences, with ``ranked`` false on every row (as on the rows of a
setup below the count models).
"""

from __future__ import annotations

import math

import pandas as pd

from moebench.reporting.ranking import mean_ci
from moebench.reporting.references import DENSE_ACTIVE

AGAINST_DENSE, AGAINST_BEST = DENSE_ACTIVE, "best router"
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no difference"
PAIRED_COLUMNS = ["task", "setup", "ranked", "against", "baseline", "seeds", "difference_mean",
                  "difference_ci95", "verdict", "quality_metric", "higher_is_better"]
PAIRED_RULE = ("Paired differences: every router sees the same data order for a given seed, so it is "
               "compared with dense (active) and with the table's best router seed by seed, on the seeds "
               "both completed: the mean per-seed difference in quality (router minus baseline) and its "
               "95% paired Student-t interval (n-1 degrees of freedom over n paired seeds; none for one "
               "seed). 'better' or 'worse' where the interval lies wholly on one side of 0, in the "
               "metric's better direction; 'no difference' where it holds 0. Reference and leaky rows "
               "and runs not completed are left out.")


def paired_differences(runs: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per task and compared setup of ``summary`` (the guarded summary of
    completed ``runs``), one row per baseline (:data:`AGAINST_DENSE`,
    :data:`AGAINST_BEST`) with the paired seeds, mean difference, interval
    half-width (NaN: under two seeds) and verdict; :data:`PAIRED_COLUMNS`.
    The best setup has no row against itself; a table without dense (active)
    has none against it."""
    # One run per seed, as the ranking counts them.
    per_seed = runs.sort_values("run_id").drop_duplicates(["task", "setup", "seed"])
    rows = []
    for task, table in summary.groupby("task", sort=True):
        compared = table[~table["reference"].astype(bool)]
        if compared.empty:
            continue
        task_runs = per_seed[per_seed["task"] == task]
        quality_by_setup = {setup: frame.set_index("seed")["quality"]
                            for setup, frame in task_runs.groupby("setup")}
        dense = table[table["variant"] == DENSE_ACTIVE]
        baselines = [(AGAINST_BEST, compared["setup"].iloc[0])]
        if not dense.empty:  # summary order: the best dense (active) first
            baselines.insert(0, (AGAINST_DENSE, dense["setup"].iloc[0]))
        higher = bool(table["higher_is_better"].iloc[0])
        for row in compared.itertuples():
            for against, baseline in baselines:
                if baseline == row.setup:
                    continue
                n, mean, half = paired_difference(quality_by_setup[row.setup], quality_by_setup[baseline])
                rows.append({"task": task, "setup": row.setup, "ranked": not pd.isna(row.rank),
                             "against": against, "baseline": baseline, "seeds": n,
                             "difference_mean": mean, "difference_ci95": half,
                             "verdict": verdict(mean, half, higher), "quality_metric": row.quality_metric,
                             "higher_is_better": higher})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def paired_difference(quality_by_seed: pd.Series, baseline_by_seed: pd.Series) -> tuple[int, float, float]:
    """(paired seeds n, mean difference, half-width of its 95% Student-t
    interval) of two setups' qualities indexed by seed; NaN where n < 2."""
    differences = (quality_by_seed - baseline_by_seed).dropna()  # aligned on seed: unpaired seeds drop
    mean, half = mean_ci(differences)
    return len(differences), mean, half


def verdict(mean: float, half: float, higher_is_better: bool) -> str:
    """``better``, ``worse`` or ``no difference`` at 95%, in the metric's
    direction; the reason where there is no interval."""
    if math.isnan(mean):
        return "no paired seeds"
    if math.isnan(half):
        return "no interval (1 paired seed)"
    if mean - half > 0:
        return BETTER if higher_is_better else WORSE
    if mean + half < 0:
        return WORSE if higher_is_better else BETTER
    return NO_DIFFERENCE


def difference_text(mean: float, half: float) -> str:
    """``0.0123, 0.0041`` -> ``+0.0123 ± 0.0041``: to the interval's second
    significant digit; the mean to 4 significant digits where the interval
    is unknown (``n/a``) or below a thousandth of it (``+0.1000 ± 0``: a
    constant difference); empty for no paired seeds."""
    if math.isnan(mean):
        return ""
    if math.isnan(half) or half <= abs(mean) / 1000:
        return f"{mean:+#.4g} ± {'n/a' if math.isnan(half) else f'{half:.2g}'}"
    decimals = max(0, 1 - math.floor(math.log10(half)))
    return f"{mean:+.{decimals}f} ± {half:.{decimals}f}"


def paired_table(paired: pd.DataFrame, setups: list[str]) -> pd.DataFrame:
    """One task's paired differences as the strings its table shows: one row
    per setup of ``setups`` (in order), columns against dense (active) (when
    the table has it) and against the best router."""
    metric = paired["quality_metric"].iloc[0]
    columns: dict[str, list[str]] = {"router": setups}
    for against in (AGAINST_DENSE, AGAINST_BEST):
        rows = paired[paired["against"] == against].set_index("setup")
        if rows.empty:
            continue
        baseline = rows["baseline"].iloc[0]
        columns[f"seeds paired with {baseline}"] = [
            str(rows.at[s, "seeds"]) if s in rows.index else "" for s in setups]
        columns[f"{metric} − {baseline} (mean ± 95% CI)"] = [
            difference_text(rows.at[s, "difference_mean"], rows.at[s, "difference_ci95"])
            if s in rows.index else "" for s in setups]
        columns[f"vs {baseline}"] = [rows.at[s, "verdict"] if s in rows.index else "(the best)"
                                     for s in setups]
    return pd.DataFrame(columns)
