"""Reference rows of a task's table: the count models, and oracle routing on the synthetic task.

Count models (:mod:`moebench.count_models`) are scored on the batches the
table's runs were evaluated on: those of its dense (active) setup, which the
guard compares with them (:mod:`.guard`), else of the most common evaluation
among its runs. They need the data files (the leaderboard's ``--data``,
default ``$MOEBENCH_DATA``); where a file or a setting is missing, the table
says why it has none. Oracle routing (the synthetic task's run beside each
run, routing by the true cluster) is the mean and 95% CI over seeds of the
runs' ``oracle_quality``.

Rows have the summary's columns (:func:`moebench.reporting.ranking.summarize`),
``router`` :data:`COUNT_MODEL` or :data:`ORACLE`, ``reference`` true and no
rank; the count models' ``seeds`` is 0 (an exact number, no spread).
"""

from __future__ import annotations

import math

import pandas as pd

from moebench.config import DataConfig
from moebench.count_models.references import EvalDraw, task_references
from moebench.errors import ConfigError, DataError
from moebench.reporting.ranking import SUMMARY_METRICS, mean_ci
from moebench.results import Results

COUNT_MODEL, ORACLE = "count model", "oracle routing"
DENSE_ACTIVE = "dense (active)"  # results.variant of router=dense, router.params=active
DRAW_KEYS = ("config.trainer.batch_tokens", "config.trainer.eval_batches")
TASK_PREFIX = "config.task."
COLUMNS = ["task", "setup", "router", "variant", "reference", "leaky", "seeds", "quality_metric",
           "higher_is_better", "quality_mean", "quality_ci95", *SUMMARY_METRICS]


def reference_rows(results: Results, data: DataConfig) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The reference rows of every task of ``results`` (completed runs), and
    per task the notes that say how they were scored or why they are missing."""
    rows, notes = [], {}
    for task, runs in results.runs.groupby("task", sort=True):
        first = runs.iloc[0]
        common = {"task": task, "reference": True, "leaky": False, "quality_metric": first["quality_metric"],
                  "higher_is_better": bool(first["higher_is_better"]),
                  **{metric: math.nan for metric in SUMMARY_METRICS}}
        counted, notes[task] = count_model_rows(task, runs, data)
        rows += [{**common, **row} for row in counted]
        if "oracle_quality" in runs and runs["oracle_quality"].notna().any():
            # The oracle trains beside every run at its budget: one value per seed.
            per_seed = runs.groupby("seed")["oracle_quality"].mean().dropna()
            mean, ci = mean_ci(per_seed)
            rows.append({**common, "setup": f"{ORACLE} (same model and budget)", "router": ORACLE,
                         "variant": ORACLE, "seeds": len(per_seed), "quality_mean": mean, "quality_ci95": ci})
    return pd.DataFrame(rows, columns=COLUMNS), notes


def count_model_rows(task: str, runs: pd.DataFrame, data: DataConfig) -> tuple[list[dict], list[str]]:
    """The count models' rows for one task's runs, and the notes on them."""
    chosen, why = evaluated_like(runs)
    missing = [key for key in DRAW_KEYS if pd.isna(chosen.get(key))]
    if missing:
        return [], [f"Count-model references not computed: the records hold no {', '.join(missing)}."]
    draw = EvalDraw(int(chosen[DRAW_KEYS[0]]), int(chosen[DRAW_KEYS[1]]))
    settings = {key.removeprefix(TASK_PREFIX): _plain(value) for key, value in chosen.items()
                if key.startswith(TASK_PREFIX) and not _missing(value)}
    try:
        references = task_references(task, data, settings, draw)
    except (DataError, ConfigError) as e:
        return [], [f"Count-model references not computed ({e}); `moebench-leaderboard "
                    "--data PATH` computes them from the data sets."]
    if not references:
        return [], []
    split = next(iter(references[0].quality))  # the first evaluation split: the runs' quality
    rows = [{"setup": f"{COUNT_MODEL}: {ref.name}", "router": COUNT_MODEL, "variant": ref.name, "seeds": 0,
             "quality_mean": ref.quality[split], "quality_ci95": math.nan} for ref in references]
    draws = _draw_of(runs)
    others = runs[draws != draws[chosen.name]]["setup"].nunique()
    note = (f"Count models: fitted on the training data, scored on the {split} batches that {why} were "
            f"evaluated on (trainer.eval_batches={draw.eval_batches}, "
            f"trainer.batch_tokens={draw.batch_tokens})")
    note += (f"; {others} setup(s) were evaluated on other batches, so their comparison with the "
             "count models is not on the same tokens." if others else ".")
    return rows, [note]


def evaluated_like(runs: pd.DataFrame) -> tuple[pd.Series, str]:
    """The run whose evaluation batches the count models are scored on: the
    first dense (active) run, else the first run of the most common
    evaluation; and who that is, for the note."""
    ordered = runs.sort_values(["setup", "run_id"])
    dense = ordered[ordered["variant"] == DENSE_ACTIVE]
    if not dense.empty:
        return dense.iloc[0], "the dense (active) runs"
    draws = _draw_of(ordered)
    counts = draws.value_counts()
    most = min(counts.index, key=lambda draw: (-counts[draw], draw))  # ties: the first by its text
    return ordered[draws == most].iloc[0], "most runs"


def _draw_of(runs: pd.DataFrame) -> pd.Series:
    """Per run, the text of what decides its evaluation batches: the draw and the task settings."""
    keys = sorted(k for k in runs.columns if k in DRAW_KEYS or k.startswith(TASK_PREFIX))
    return pd.Series([repr(tuple(values)) for values in runs[keys].itertuples(index=False)],
                     index=runs.index, dtype=object)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: object) -> object:
    """A frame's value as the record held it: a Python scalar, and an int
    where a column of mixed tasks made it a float (128.0: block_size)."""
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value
