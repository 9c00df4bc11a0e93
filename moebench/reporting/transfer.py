"""The fine-tuning gap report: does a sparse model fine-tune worse than a dense one?

From the records of the transfer sweep (conf/experiment/transfer_gap.yaml:
pretrain on one task, fine-tune on another), per router:

* the fine-tuned quality (the record's ``quality``) and the pretraining
  quality (``pretrain_quality``, on ``transfer.pretrain_task``), each the
  mean and Student-t 95% confidence interval over seeds;
* on each, the paired difference to dense (active), seed by seed on the
  seeds both completed, with its Student-t interval and verdict
  (:mod:`moebench.reporting.paired`): a router that beats dense (active) in
  pretraining but not after fine-tuning fine-tunes worse than it pretrains,
  as the surveys report of sparse models.

``transfer.md`` holds the commits the records came from (provenance.py), the
table, a verdict line per router and a count of the verdicts; ``transfer.csv``
the same numbers unformatted. Only completed runs count; the others are named.
Seeds of different configs never pool: two setups of one task with the same
router are refused. Written by
``moebench-report --transfer`` (moebench/commands/report.py).
"""

from __future__ import annotations

import math

import pandas as pd

from moebench.errors import ConfigError
from moebench.reporting.paired import BETTER, NO_DIFFERENCE, WORSE, difference_text, paired_difference, verdict
from moebench.reporting.provenance import provenance_line
from moebench.reporting.ranking import REFERENCE_ROUTERS, mean_ci, summarize
from moebench.reporting.references import DENSE_ACTIVE
from moebench.reporting.render import markdown_table, mean_and_interval
from moebench.tasks import TASKS

PRETRAIN_TASK = "config.transfer.pretrain_task.name"
FILES = ("transfer.md", "transfer.csv")
# (column prefix, the runs' column): the fine-tuned quality, then the pretraining quality.
PHASES = (("", "quality"), ("pretrain_", "pretrain_quality"))
CSV_COLUMNS = ["task", "router", "variant", "setup", "leaky", "quality_metric", "higher_is_better", "pretrain_task",
               "pretrain_metric", "pretrain_higher_is_better",
               *[f"{prefix}{column}" for prefix, _ in PHASES for column in
                 ("seeds", "quality_mean", "quality_ci95", "gap_seeds", "gap_mean", "gap_ci95", "verdict")]]
TITLE = "The fine-tuning gap"
INTRO = ("Each router pretrained on {pretrain} and fine-tuned on {task}, the body carried over (attention, "
         "routers, experts, norms; embeddings and head restart for the new vocabulary). Quality: mean ± "
         "Student-t 95% confidence interval over seeds (n/a: one seed). Gap: the router minus dense "
         "(active), seed by seed on the seeds both completed, with its paired 95% interval; 'better' or "
         "'worse' where the interval lies wholly on one side of 0, in the metric's better direction. A "
         "router better than dense (active) in pretraining but not after fine-tuning fine-tunes worse "
         "than it pretrains. Only completed runs count.")


def transfer_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, setup) of the completed ``runs``: :data:`CSV_COLUMNS`,
    dense (active) first, then by fine-tuned quality, best first. ConfigError
    where two setups of a task share a router (their seeds would pool)."""
    completed = runs[runs["status"] == "completed"]
    # One run per seed, as the ranking counts them.
    per_seed = completed.sort_values("run_id").drop_duplicates(["task", "setup", "seed"])
    summary = summarize(per_seed)
    clash = summary[summary.duplicated(["task", "variant"], keep=False)]
    if not clash.empty:
        raise ConfigError("setups", "; ".join(f"{task}: {', '.join(sorted(group['setup']))}"
                                              for task, group in clash.groupby("task")),
                          "one config per task and router in the results folder "
                          "(move the records of the others out of it)")
    rows = [_setup_row(row, per_seed[per_seed["task"] == row.task]) for row in summary.itertuples()]
    if not rows:
        return pd.DataFrame(columns=CSV_COLUMNS)
    frame = pd.DataFrame(rows)
    better_first = frame["quality_mean"].where(~frame["higher_is_better"], -frame["quality_mean"])
    order = frame.assign(not_dense=frame["variant"] != DENSE_ACTIVE, better_first=better_first)
    order = order.sort_values(["task", "not_dense", "better_first"])
    return frame.loc[order.index, CSV_COLUMNS].reset_index(drop=True)


def _setup_row(setup, task_runs: pd.DataFrame) -> dict:
    """The row of one ``setup`` (a row of ranking.summarize) of a task's
    ``task_runs``: its qualities in both phases and its gaps to dense (active)."""
    pretrain = _pretrain_task(task_runs)
    pretrain_cls = TASKS.get(pretrain).cls
    higher = {"": setup.higher_is_better, "pretrain_": pretrain_cls.higher_is_better}
    by_seed = {name: frame.set_index("seed") for name, frame in task_runs.groupby("setup")}
    dense = task_runs.loc[task_runs["variant"] == DENSE_ACTIVE, "setup"]
    row = {"task": setup.task, "router": setup.router, "variant": setup.variant, "setup": setup.setup,
           "leaky": setup.leaky, "quality_metric": setup.quality_metric, "higher_is_better": setup.higher_is_better,
           "pretrain_task": pretrain, "pretrain_metric": pretrain_cls.quality_metric,
           "pretrain_higher_is_better": higher["pretrain_"]}
    for prefix, column in PHASES:
        own = by_seed[setup.setup][column] if column in task_runs else pd.Series(dtype=float)
        mean, half = mean_ci(own)
        gap = {"gap_seeds": 0, "gap_mean": math.nan, "gap_ci95": math.nan, "verdict": "no dense (active)"}
        if setup.variant == DENSE_ACTIVE:
            gap["verdict"] = ""
        elif not dense.empty:
            n, gap_mean, gap_half = paired_difference(own, by_seed[dense.iloc[0]][column])
            gap = {"gap_seeds": n, "gap_mean": gap_mean, "gap_ci95": gap_half,
                   "verdict": verdict(gap_mean, gap_half, higher[prefix])}
        row.update({f"{prefix}seeds": int(own.notna().sum()), f"{prefix}quality_mean": mean,
                    f"{prefix}quality_ci95": half, **{f"{prefix}{k}": v for k, v in gap.items()}})
    return row


def _pretrain_task(task_runs: pd.DataFrame) -> str:
    """The one pretraining task of a fine-tuning task's runs; ConfigError for none or several."""
    names = task_runs[PRETRAIN_TASK].dropna().unique() if PRETRAIN_TASK in task_runs else []
    if len(names) != 1:
        raise ConfigError("transfer.pretrain_task", ", ".join(map(str, names)) or "none",
                          f"one pretraining task for the runs fine-tuned on {task_runs['task'].iloc[0]}")
    return str(names[0])


def transfer_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One task's summary as the strings of its Markdown table."""
    first = summary.iloc[0]
    columns = {"router": [variant + (" (leaky)" if leaky else "")
                          for variant, leaky in zip(summary["variant"], summary["leaky"])]}
    for prefix, phase, task, metric in (("", "fine-tuned", first["task"], first["quality_metric"]),
                                        ("pretrain_", "pretrained", first["pretrain_task"],
                                         first["pretrain_metric"])):
        columns[f"{phase} on {task}: seeds"] = summary[f"{prefix}seeds"].astype(str).tolist()
        columns[f"{metric} (mean ± 95% CI)"] = [
            mean_and_interval(m, ci) for m, ci in zip(summary[f"{prefix}quality_mean"],
                                                      summary[f"{prefix}quality_ci95"])]
        columns[f"{metric} − {DENSE_ACTIVE} (paired seeds: mean ± 95% CI)"] = [
            f"{n}: {difference_text(m, ci)}" if n else "" for n, m, ci in
            zip(summary[f"{prefix}gap_seeds"], summary[f"{prefix}gap_mean"], summary[f"{prefix}gap_ci95"])]
        columns[f"{phase}: vs {DENSE_ACTIVE}"] = summary[f"{prefix}verdict"].tolist()
    return pd.DataFrame(columns)


def verdict_lines(summary: pd.DataFrame) -> list[str]:
    """A line per router of one task (dense (active) excepted), and the count of
    the routing routers' fine-tuning verdicts: does this suite see sparse
    models fine-tune worse than dense ones?"""
    lines = [f"- {row['variant']}: after fine-tuning, {_gap(row, '', row['quality_metric'])}; "
             f"in pretraining, {_gap(row, 'pretrain_', row['pretrain_metric'])}."
             for _, row in summary[summary["variant"] != DENSE_ACTIVE].iterrows()]
    routed = summary[~summary["router"].isin(REFERENCE_ROUTERS)]
    counts = {v: int((routed["verdict"] == v).sum()) for v in (WORSE, BETTER, NO_DIFFERENCE)}
    lines += ["", f"Of {len(routed)} routers (the dense baselines aside), after fine-tuning: "
              f"{counts[WORSE]} worse than {DENSE_ACTIVE}, {counts[BETTER]} better, "
              f"{counts[NO_DIFFERENCE]} no difference, {len(routed) - sum(counts.values())} "
              "without a paired interval."]
    return lines


def _gap(row: pd.Series, prefix: str, metric: str) -> str:
    """``worse (+0.050 ± 0.025 bpc, 3 paired seeds)``: one phase's verdict and gap."""
    seeds = row[f"{prefix}gap_seeds"]
    if not seeds:
        return row[f"{prefix}verdict"]
    difference = difference_text(row[f"{prefix}gap_mean"], row[f"{prefix}gap_ci95"])
    return f"{row[f'{prefix}verdict']} ({difference} {metric}, {seeds} paired seed{'s' * (seeds != 1)})"


def left_out(runs: pd.DataFrame) -> list[str]:
    """One task's runs that did not complete, by router and seed."""
    runs = runs[runs["status"] != "completed"].sort_values(["variant", "seed"])
    if runs.empty:
        return []
    return ["Left out (not completed): " + ", ".join(
        f"{variant} seed {seed} ({status})"
        for variant, seed, status in runs[["variant", "seed", "status"]].itertuples(index=False)) + "."]


def markdown(summary: pd.DataFrame, runs: pd.DataFrame) -> str:
    lines = [f"# {TITLE}", "", provenance_line(runs), ""]
    for task in sorted(runs["task"].unique()):
        rows = summary[summary["task"] == task]
        lines += [f"## {task}", ""]
        if not rows.empty:
            intro = INTRO.format(pretrain=rows["pretrain_task"].iloc[0], task=task)
            higher = "Higher" if rows["higher_is_better"].iloc[0] else "Lower"
            lines += [intro, "", markdown_table(transfer_table(rows)), "",
                      f"{higher} {rows['quality_metric'].iloc[0]} is better.", "", *verdict_lines(rows), ""]
        lines += [*left_out(runs[runs["task"] == task]), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def transfer_files(runs: pd.DataFrame) -> dict[str, bytes]:
    """:data:`FILES` (name -> content) of ``runs`` (the runs frame of
    moebench.results); ConfigError when no run completed."""
    summary = transfer_summary(runs)
    if summary.empty:
        raise ConfigError("runs", f"{len(runs)} run(s), none completed",
                          "at least one completed run of the transfer sweep")
    return {"transfer.md": markdown(summary, runs).encode(),
            "transfer.csv": summary.to_csv(index=False, lineterminator="\n").encode()}
