"""The expert-count report: quality against the number of experts E at fixed
active FLOPs per token, one line per router, the dense model at E = 1 (Clark
et al. 2022, "Unified Scaling Laws for Routed Language Models", Figure 1).

From the records of the expert-count sweep (conf/experiment/experts.yaml),
E being each record's ``moe.num_experts``:

* ``experts.md``: per task, a table of routers (rows) by E (columns), each
  cell the quality's mean and Student-t 95% confidence interval over seeds,
  under the commits the records came from (provenance.py);
* ``experts.csv``: the same numbers unformatted, with the FLOPs per token
  and the steps the training budget allowed;
* ``experts.svg``: a panel per task, quality against E on a log2 axis, a
  line and 95% CI band per router; the reference routers (the dense
  baselines: one FFN, no routing) as points at their E and dotted lines.

Only completed runs count; the others are named under their task. Seeds of
different configs never pool: two setups of one task with the same router
and E are refused. Byte-identical output for the same records (render.py).
Written by ``moebench-report --experts`` (moebench/commands/report.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from moebench.errors import ConfigError
from moebench.reporting.figures import palette, quality_label
from moebench.reporting.provenance import provenance_line
from moebench.reporting.ranking import REFERENCE_ROUTERS, SUMMARY_METRICS, summarize
from moebench.reporting.render import figure_svg, markdown_table, mean_and_interval

EXPERTS = "config.moe.num_experts"
# Per-run figures averaged over seeds beside the quality: what the budget bought.
BUDGET_METRICS = ("train_flops_per_token", "steps")
FILES = ("experts.md", "experts.csv", "experts.svg")
CSV_COLUMNS = ["task", "variant", "E", "setup", "seeds", "leaky", "quality_metric", "higher_is_better",
               "quality_mean", "quality_ci95", *SUMMARY_METRICS, *BUDGET_METRICS]
TITLE = "Quality against the number of experts"
INTRO = ("Quality against the number of experts E at fixed active FLOPs per token (Clark et al. "
         "2022, \"Unified Scaling Laws for Routed Language Models\", Figure 1): whatever E, a token "
         "passes through expert FFNs of the same total width, and E = 1 is the dense FFN of that "
         "width; the gate alone grows with E (2 d_model FLOPs per routed expert and layer). The "
         "sweep trains every point of a task on the same tokens; experts.csv lists each point's "
         "training FLOPs per token and steps. E is moe.num_experts. "
         "Cells: mean ± Student-t 95% confidence interval over seeds (n/a: one seed). Only "
         "completed runs count.")


def experts_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, setup) of the completed ``runs`` (ranking.summarize:
    seeds, quality mean and CI, leaky), with its ``E``, ``line`` (False for the
    reference routers) and the means of :data:`BUDGET_METRICS`; reference
    routers first. ConfigError where two setups of a task share router and
    E: their seeds would pool into one point, or a line have two at one E."""
    completed = runs[runs["status"] == "completed"]
    completed = completed.assign(**{m: np.nan for m in BUDGET_METRICS if m not in completed})
    per_setup = completed.groupby(["task", "setup"]).agg(
        E=(EXPERTS, "first"), **{m: (m, "mean") for m in BUDGET_METRICS}).reset_index()
    summary = summarize(completed).merge(per_setup, on=["task", "setup"])
    summary = summary.assign(E=summary["E"].astype(int), line=~summary["router"].isin(REFERENCE_ROUTERS))
    clash = summary[summary.duplicated(["task", "variant", "E"], keep=False)]
    if not clash.empty:
        raise ConfigError("setups", "; ".join(f"{task}: {', '.join(sorted(group['setup']))}"
                                              for task, group in clash.groupby("task")),
                          "one config per task, router and E in the results folder "
                          "(move the records of the others out of it)")
    return summary.sort_values(["task", "line", "variant", "E"]).reset_index(drop=True)


def experts_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One task's summary as the strings of its Markdown table: a row per
    router (reference routers first), a column per E."""
    columns = sorted(summary["E"].unique())
    rows = []
    for variant, group in summary.groupby("variant", sort=False):
        cells = {E: mean_and_interval(m, ci) for E, m, ci in
                 zip(group["E"], group["quality_mean"], group["quality_ci95"])}
        seeds = sorted({group["seeds"].min(), group["seeds"].max()})
        rows.append({"router": variant + (" (leaky)" if group["leaky"].any() else ""),
                     "seeds": "-".join(map(str, seeds)),
                     **{f"E = {E}": cells.get(E, "") for E in columns}})
    return pd.DataFrame(rows)


def task_notes(runs: pd.DataFrame) -> list[str]:
    """The direction of one task's metric, and its runs left out (not completed)."""
    first = runs.iloc[0]
    notes = [f"{'Higher' if first['higher_is_better'] else 'Lower'} {first['quality_metric']} is better."]
    left_out = runs[runs["status"] != "completed"].sort_values(["variant", EXPERTS, "seed"])
    if not left_out.empty:
        notes.append("Left out (not completed): " + ", ".join(
            f"{variant} at E = {E} seed {seed} ({status})" for variant, E, seed, status
            in left_out[["variant", EXPERTS, "seed", "status"]].itertuples(index=False)) + ".")
    return notes


def experts_figure(summary: pd.DataFrame) -> Figure:
    """A panel per task: mean quality against E (log2 axis), a line and 95% CI
    band per router; reference routers as points (95% CI bars) at their E
    with a dotted line at their mean across the panel."""
    tasks = sorted(summary["task"].unique())
    colors = palette(summary["variant"])
    ticks = sorted(summary["E"].unique())
    fig = Figure(figsize=(5 * len(tasks) + 2.5, 4.5), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False).ravel()
    for ax, task in zip(axes, tasks):
        rows = summary[summary["task"] == task]
        for variant, group in rows.groupby("variant", sort=False):
            E, mean, ci = group["E"], group["quality_mean"], group["quality_ci95"].fillna(0)
            color = colors[variant]
            if group["line"].iloc[0]:
                ax.plot(E, mean, marker="o", color=color, label=variant)
                ax.fill_between(E, mean - ci, mean + ci, color=color, alpha=0.15, linewidth=0)
                continue
            ax.errorbar(E, mean, yerr=ci, fmt="s", color=color, capsize=3,
                        label=f"{variant}, E = {', '.join(map(str, E))}")
            for value in mean:
                ax.axhline(value, color=color, linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(E) for E in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, alpha=0.3)
        ax.set(title=task, xlabel="experts E (log2 scale)", ylabel=quality_label(rows))
    labelled = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(labelled.values(), labelled.keys(), loc="outside right upper", frameon=False, fontsize="small")
    return fig


def markdown(summary: pd.DataFrame, runs: pd.DataFrame) -> str:
    lines = [f"# {TITLE}", "", INTRO, "", provenance_line(runs), ""]
    for task in sorted(runs["task"].unique()):
        rows = summary[summary["task"] == task]
        lines += [f"## {task}", ""]
        if not rows.empty:
            lines += [markdown_table(experts_table(rows)), ""]
        lines += [f"{note}  " for note in task_notes(runs[runs["task"] == task])] + [""]
    lines += ["![quality against the number of experts, a panel per task](experts.svg)"]
    return "\n".join(lines) + "\n"


def experts_files(runs: pd.DataFrame) -> dict[str, bytes]:
    """:data:`FILES` (name -> content) of ``runs`` (the runs frame of
    moebench.results); ConfigError when no run completed."""
    summary = experts_summary(runs)
    if summary.empty:
        raise ConfigError("runs", f"{len(runs)} run(s), none completed",
                          "at least one completed run of the expert-count sweep")
    return {"experts.md": markdown(summary, runs).encode(),
            "experts.csv": summary[CSV_COLUMNS].to_csv(index=False, lineterminator="\n").encode(),
            "experts.svg": figure_svg(experts_figure(summary))}
