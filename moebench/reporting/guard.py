"""The guard: a task's routers are ranked only once its models are past the count models.

The rule (:data:`GUARD_RULE`): the dense (active) baseline, the equal-FLOPs
model without routing, must be better than the best of the table's
*plateau* references, the unigram and the bigram (:data:`PLATEAU`; the
majority class on the synthetic task), by at least :data:`MARGIN` of that
reference's value, in the table's own metric: at most 0.9x its bits per
character or perplexity, at least 1.1x its accuracy; a masked-token loss in
nats at most ln(0.9) below it (0.9x in perplexity).

Why the bigram and not the Kneser-Ney trigram: the plateau a small model
sits on while it learns token frequencies and the pairs of adjacent tokens
is what a bigram table knows; past it, its router has something to route.
The trigram is a strong model in its own right on the word-level tasks
(PTB perplexity 148, Mikolov 2012's KN3), far beyond what the CPU tier's
models reach at any budget it can afford, so the tables show it, as the
bar above, but do not gate on it. Where it is not, the table is
marked "not past the count models" and nothing in it is ranked: its models
have learned about as much as counting does, and the order of its routers
says little about routing. Where the table has no dense (active) setup or
no count-model reference (no data files), the guard cannot be checked; the
table says so and is ranked as before.

In a table that is past them, a setup whose mean is not better than that
same best plateau reference (no margin: it has not learned what the bigram
table knows) is shown but not ranked (``below_count_models``): a rank among
models that did learn more than counting would read as a place in a race
it has not joined. It still enters the cross-task summary
(:mod:`.crosstask`), where it takes its place by its mean: leaving the task
out of its average would flatter the router.

Why 10%. The count models are scored on the very batches the models were
evaluated on (:mod:`.references`), so what is left between the two numbers
is the evaluation sample's noise in the *difference* of two models. At the
smallest evaluation the suite ships (``cpu_quick``: 8 batches of 512 tokens),
twice the standard deviation of that difference, for the bigram against the
trigram over 300 random draws of the validation windows (100 for the masked
LM), is 8.4% in perplexity on PTB (0.088 nats per token), 6.7% on
WikiText-2, 2.9% in masked-token loss, and 2.3% and 1.9% in bits per
character (Tiny Shakespeare, PTB-char). On the synthetic task two accuracies
on the same 4,096 examples differ by a standard deviation of at most
sqrt(0.5 / 4096) = 0.011; twice that is under 9% of the majority class's
0.26. 10% is the smallest round margin above all of them, so a dense model
no better than the counts rarely passes by chance, and it still asks little
of a model that learned: nanoGPT's Tiny Shakespeare model (2.12 bpc) is 28%
below the trigram (2.94).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from moebench.count_models.ngram import Bigram, Unigram
from moebench.count_models.references import MAJORITY_NAME
from moebench.reporting.references import COUNT_MODEL, DENSE_ACTIVE
from moebench.reporting.render import exact

MARGIN = 0.10
# Metrics that are a loss in nats (the masked LM's): the margin applies to
# their perplexity, as on the word-level tasks, not to the nats themselves
# (10% of 6.7 nats would ask for half the perplexity).
NATS_METRICS = ("masked_loss",)
PLATEAU = (Unigram.name, Bigram.name, MAJORITY_NAME)  # the references the guard compares with
GUARD_RULE = (f"A table is ranked only when its dense (active) baseline beats the best of the unigram and "
              f"bigram references (the majority class on the synthetic task) by at least {MARGIN:.0%} of "
              f"its value in the table's metric (at most "
              f"{1 - MARGIN:g}x where lower is better, at least {1 + MARGIN:g}x where higher is better); "
              "otherwise it is marked 'not past the count models' and nothing in it is ranked: its "
              "models learned about as much as counting does. In a table that is ranked, a router whose "
              "mean is not better than that best reference is shown as 'below counts' and not ranked "
              "(it still enters the cross-task summary by its mean). The count models are scored on the "
              f"tokens the runs were evaluated on, and {MARGIN:.0%} is above twice the evaluation "
              "sample's noise in such a comparison at the CPU tier.")


@dataclass(frozen=True)
class Verdict:
    """Whether one table is past the count models: True, False, or None
    (not checked), the sentence that says so, and, in a table that is, the
    setups whose mean is not better than the best plateau reference (``below``)."""

    passed: bool | None
    text: str
    below: tuple[str, ...] = ()


def verdict(summary: pd.DataFrame, references: pd.DataFrame) -> Verdict:
    """The guard's verdict on one task's ``summary`` and its ``references`` rows."""
    counts = references[(references["router"] == COUNT_MODEL) & references["variant"].isin(PLATEAU)]
    dense = summary[summary["variant"] == DENSE_ACTIVE]
    if counts.empty or dense.empty:
        missing = "dense (active) run" if dense.empty else "count-model references"
        return Verdict(None, f"Not checked against the count models: the table has no {missing}.")
    higher = bool(summary["higher_is_better"].iloc[0])
    metric = summary["quality_metric"].iloc[0]
    best, baseline = _best(counts, higher), _best(dense, higher)
    if metric in NATS_METRICS:  # a loss: 10% in perplexity, exp(loss), is ln(0.9) nats
        threshold = best["quality_mean"] + math.log(1 - MARGIN)
    else:
        threshold = best["quality_mean"] * (1 + MARGIN if higher else 1 - MARGIN)
    value = baseline["quality_mean"]
    passed = bool(value >= threshold if higher else value <= threshold)
    needed = f"{exact(threshold)} or {'higher' if higher else 'lower'} needed"
    comparison = (f"{baseline['setup']} scores {exact(value)} {metric}, {'' if passed else 'not '}"
                  f"{MARGIN:.0%} better than the best of the unigram and bigram, {best['variant']}, at "
                  f"{exact(best['quality_mean'])} ({needed})")
    if not passed:
        return Verdict(False, f"Not past the count models: {comparison}. Nothing in this table is ranked.")
    compared = summary[~summary["reference"].astype(bool)]
    below = compared[compared["quality_mean"] <= best["quality_mean"] if higher
                     else compared["quality_mean"] >= best["quality_mean"]]
    text = f"Past the count models: {comparison}."
    if not below.empty:
        text += (f" Below the count models, so not ranked (not better than {best['variant']}): "
                 + ", ".join(f"{row.setup} at {exact(row.quality_mean)}" for row in below.itertuples())
                 + ".")
    return Verdict(True, text, tuple(below["setup"]))


def _best(rows: pd.DataFrame, higher_is_better: bool) -> pd.Series:
    """The row of ``rows`` with the best ``quality_mean``."""
    pick = max if higher_is_better else min
    return rows.loc[pick(rows.index, key=lambda i: rows.at[i, "quality_mean"])]


def apply_guard(summary: pd.DataFrame, references: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Verdict]]:
    """``summary`` with no rank in the tables not past the count models nor
    for the setups below them (``below_count_models``), and each task's verdict."""
    verdicts = {task: verdict(rows, references[references["task"] == task])
                for task, rows in summary.groupby("task", sort=True)}
    failed = summary["task"].map(lambda task: verdicts[task].passed is False).astype(bool)
    below = pd.Series([setup in verdicts[task].below for task, setup in zip(summary["task"], summary["setup"])],
                      index=summary.index, dtype=bool)
    return summary.assign(rank=summary["rank"].mask(failed | below), below_count_models=below), verdicts
