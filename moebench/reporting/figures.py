"""Comparison figures (seaborn, long-form frames), one task at a time.

Each function takes frames of one task from :mod:`moebench.results` (or the
summary of :mod:`moebench.reporting.ranking`) and returns a matplotlib
Figure, or None when the records do not hold its data (older records, a task
without known clusters, no capacity sweep), so the caller simply skips it.
Figures are built on ``matplotlib.figure.Figure`` directly, never through
pyplot: no global figure registry, no GUI backend.

Heatmaps of experts show one run per setup (the lowest seed): expert indices
are arbitrary per seed, so an average over seeds would blur them.

Heatmap tick labels are placed here, by seaborn's rules, and measured with one
renderer per figure (:func:`heatmap`). Left to sns.heatmap, every label
measurement on a Figure without a canvas renders the figure into a fresh
full-size buffer that the label then keeps: the committed leaderboard took
12 GB and 84 s that way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter

from moebench.reporting.paired import AGAINST_DENSE
from moebench.reporting.ranking import COMM_RANKS
from moebench.reporting.render import si
from moebench.results import Results

GRID_COLUMNS = 4  # heatmap panels per row
# A heatmap of more experts is unreadable (and a huge SVG): PEER's setups,
# with thousands of single-neuron experts, are left out of the heatmaps.
MAX_EXPERTS_SHOWN = 64


def quality_label(frame: pd.DataFrame) -> str:
    first = frame.iloc[0]
    return f"{first['quality_metric']} ({'higher' if first['higher_is_better'] else 'lower'} is better)"


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def palette(names: Iterable[str]) -> dict[str, tuple]:
    """One colour per name, the same in every figure of a task."""
    names = sorted(set(names))
    colors = sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))
    return dict(zip(names, colors))


def _flops_axis(ax: Axes, flops: pd.Series) -> None:
    """Log scale when the costs span a decade; ticks as 278k, 1.2M."""
    if flops.max() > 10 * flops.min():
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: si(value, 3)))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


def legend_outside(ax: Axes) -> None:
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize="small")


# Reference lines: grey, one dash pattern each (none the Pareto front's plain dashes),
# so they read apart from the routers' colours and from the front.
REFERENCE_STYLES = (":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 4)))


def reference_lines(ax: Axes, references: pd.DataFrame) -> None:
    """One horizontal line per reference row (count models, oracle routing)
    at its quality, added to the axes' legend after seaborn's entries."""
    lines = [ax.axhline(row.quality_mean, color="0.4", linewidth=1,
                        linestyle=REFERENCE_STYLES[i % len(REFERENCE_STYLES)], zorder=0)
             for i, row in enumerate(references.itertuples())]
    if not lines:
        return
    legend = ax.get_legend()
    handles = [*(legend.legend_handles if legend else []), *lines]
    labels = [*(text.get_text() for text in (legend.texts if legend else [])), *references["setup"]]
    ax.legend(handles, labels)


def pareto_front(points: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """The points that no other point beats on both quality and FLOPs per
    token, cheapest first: the best quality reachable at each cost."""
    sign = 1 if higher_is_better else -1
    ordered = points.sort_values(["flops_per_token", "quality_mean"], ascending=[True, not higher_is_better])
    best, keep = -math.inf, []
    for index, row in ordered.iterrows():
        if sign * row["quality_mean"] > best:
            best = sign * row["quality_mean"]
            keep.append(index)
    return ordered.loc[keep]


def quality_vs_flops(summary: pd.DataFrame, colors: dict[str, tuple],
                     references: pd.DataFrame) -> Figure | None:
    """Mean quality (95% CI bars) against forward FLOPs per token, with the
    Pareto front of the ranked routers; reference rows drawn as crosses, and
    ``references`` (count models, oracle routing) as horizontal lines."""
    points = summary.dropna(subset=["flops_per_token", "quality_mean"])
    if points.empty:
        return None
    points = points.assign(kind=np.where(points["reference"], "reference", "router"))
    fig = _figure(9, 5)
    ax = fig.subplots()
    ax.errorbar(points["flops_per_token"], points["quality_mean"], yerr=points["quality_ci95"].fillna(0),
                fmt="none", ecolor="0.6", zorder=1)
    sns.scatterplot(data=points, x="flops_per_token", y="quality_mean", hue="setup", palette=colors,
                    style="kind", markers={"router": "o", "reference": "X"}, s=70, ax=ax, zorder=2)
    front = pareto_front(points[~points["reference"]], bool(points["higher_is_better"].iloc[0]))
    ax.plot(front["flops_per_token"], front["quality_mean"], drawstyle="steps-post", color="0.3",
            linestyle="--", linewidth=1, zorder=0)
    ax.set(xlabel="forward FLOPs per token", ylabel=quality_label(points))
    _flops_axis(ax, points["flops_per_token"])
    reference_lines(ax, references)
    legend_outside(ax)
    return fig


def quality_vs_rank_load(runs: pd.DataFrame, summary: pd.DataFrame,
                         colors: dict[str, tuple]) -> Figure | None:
    """Quality against the load of the busiest of P processes over the mean
    (``comm_rank_load_max_over_mean``, P = ``moe.comm_ranks``), a labelled
    point per setup at its means over the seeds that recorded it, bars from
    the lowest to the highest of those seeds on both axes; reference rows (the oracle) as crosses. None
    unless two setups or more recorded it (older records did not).

    Imbalance rather than bytes per token: with experts placed contiguously,
    about (P - 1) / P of a token's rows leave its process whatever the
    router, so bytes per token follow the experts a token reaches, which
    quality_vs_flops already shows as FLOPs; the busiest process's load
    differs between routers of equal cost, and it sets every step's time.
    (At P = E, the default 8 of 8, it is the busiest expert's kept rows over
    the mean: load_max_over_mean after capacity.) No count-model lines: far
    below the routers, they would flatten the differences this figure is for."""
    metric = "comm_rank_load_max_over_mean"
    if metric not in runs:
        return None
    per_seed = runs.sort_values("run_id").drop_duplicates(["setup", "seed"])  # one run a seed, as summarize
    per_seed = per_seed.dropna(subset=[metric, "quality"])
    if per_seed["setup"].nunique() < 2:
        return None
    points = (per_seed.groupby("setup")
              .agg(x=(metric, "mean"), x_low=(metric, "min"), x_high=(metric, "max"),
                   y=("quality", "mean"), y_low=("quality", "min"), y_high=("quality", "max"))
              .reset_index().merge(summary[["setup", "reference"]], on="setup"))
    points = points.assign(kind=np.where(points["reference"], "reference", "router"))
    fig = _figure(9, 5)
    ax = fig.subplots()
    ax.errorbar(points["x"], points["y"], fmt="none", ecolor="0.6", zorder=1,
                xerr=[points["x"] - points["x_low"], points["x_high"] - points["x"]],
                yerr=[points["y"] - points["y_low"], points["y_high"] - points["y"]])
    sns.scatterplot(data=points, x="x", y="y", hue="setup", palette=colors, style="kind",
                    markers={"router": "o", "reference": "X"}, s=70, legend=False, ax=ax, zorder=2)
    for row in points.itertuples():
        ax.annotate(row.setup, (row.x, row.y), xytext=(5, 4), textcoords="offset points", fontsize="small")
    ranks = ", ".join(str(int(p)) for p in sorted(per_seed[COMM_RANKS].dropna().unique()))
    ax.set(xlabel=f"rows of the busiest process's experts / mean, P = {ranks} (1: even)",
           ylabel=quality_label(per_seed))
    return fig


def _holds(frame: pd.DataFrame, column: str) -> bool:
    """Whether some record gave ``frame`` a value of ``column`` (older ones lack newer fields)."""
    return column in frame and bool(frame[column].notna().any())


def seed_spread(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Per setup and point (``point``: the i-th of each run's curve, in step
    order), the mean of ``x`` and the mean, min and max of ``y`` over seeds.

    Seeds are pooled by point, not by value of ``x``: training FLOPs, executed
    as routed, differ between seeds at one step, and so do the steps a FLOPs
    budget buys, while the i-th of ``trainer.eval_points`` evaluations comes
    at the same share of every seed's training. ``frame`` is sorted by run
    and step, as :mod:`moebench.results` sorts it."""
    kept = frame.assign(point=frame.groupby("run_id", sort=False).cumcount()).dropna(subset=[x, y])
    return (kept.groupby(["setup", "point"])
            .agg(x=(x, "mean"), mean=(y, "mean"), low=(y, "min"), high=(y, "max")).reset_index())


def spread_figure(spread: pd.DataFrame, colors: dict[str, tuple], xlabel: str, ylabel: str,
                   marker: str | None) -> tuple[Figure, Axes]:
    """One line per setup, its mean over seeds, in a band from min to max."""
    fig = _figure(9, 5)
    ax = fig.subplots()
    for setup, line in spread.groupby("setup", sort=True):
        ax.fill_between(line["x"], line["low"], line["high"], color=colors[setup], alpha=0.2, linewidth=0)
        ax.plot(line["x"], line["mean"], color=colors[setup], marker=marker, markersize=4, label=setup)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: si(value, 3)))
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend()
    return fig, ax


def _quality_figure(curves: pd.DataFrame, runs: pd.DataFrame, colors: dict[str, tuple],
                    references: pd.DataFrame, x: str, xlabel: str) -> Figure | None:
    """Quality against ``x``, with the reference lines; None where no record holds both."""
    if not (_holds(curves, "quality") and _holds(curves, x)):
        return None
    fig, ax = spread_figure(seed_spread(curves, x, "quality"), colors, xlabel, quality_label(runs), "o")
    reference_lines(ax, references)
    legend_outside(ax)
    return fig


def quality_curves(curves: pd.DataFrame, runs: pd.DataFrame, colors: dict[str, tuple],
                   references: pd.DataFrame) -> Figure | None:
    """Quality at each evaluation against the training tokens before it
    (line: mean over seeds; band: min to max over seeds); ``references``
    (count models, oracle routing) as horizontal lines. Against the step
    where no record holds ``train_tokens`` (records from before it)."""
    x, xlabel = ("train_tokens", "training tokens") if _holds(curves, "train_tokens") else \
        ("step", "training step")
    return _quality_figure(curves, runs, colors, references, x, xlabel)


def quality_vs_train_flops(curves: pd.DataFrame, runs: pd.DataFrame, colors: dict[str, tuple],
                           references: pd.DataFrame) -> Figure | None:
    """Quality at each evaluation against the training FLOPs spent before it
    (3x the forward FLOPs as executed, as ``trainer.max_train_flops`` counts
    them): routers that cost more per token move right. As
    :func:`quality_curves`; None for records from before ``train_flops``."""
    return _quality_figure(curves, runs, colors, references, "train_flops",
                           "training FLOPs (3x forward, as executed)")


def train_loss_curves(losses: pd.DataFrame, colors: dict[str, tuple]) -> Figure | None:
    """The training loss against training tokens, each point the mean over a
    bucket of steps (the records' ``train_loss_curve``; line: mean over
    seeds; band: min to max over seeds); None for records from before it."""
    if not (_holds(losses, "train_loss") and _holds(losses, "train_tokens")):
        return None
    fig, ax = spread_figure(seed_spread(losses, "train_tokens", "train_loss"), colors,
                             "training tokens", "training loss (nats per token)", None)
    legend_outside(ax)
    return fig


def drop_vs_capacity(runs: pd.DataFrame) -> Figure | None:
    """Drop rate against the capacity factor, for routers run at several
    factors: training drops against ``moe.capacity_factor``, evaluation drops
    against ``moe.eval_capacity_factor``."""
    panels = [(f"config.moe.{factor}", metric, title) for factor, metric, title in
              [("capacity_factor", "train_drop_rate", "training"),
               ("eval_capacity_factor", "drop_rate", "evaluation")]
              if f"config.moe.{factor}" in runs and metric in runs
              and runs.groupby("variant")[f"config.moe.{factor}"].nunique().max() > 1]
    if not panels:
        return None
    fig = _figure(6 * len(panels) + 2, 4.5)
    for ax, (factor, metric, title) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        swept = runs[runs.groupby("variant")[factor].transform("nunique") > 1]
        sns.lineplot(data=swept, x=factor, y=metric, hue="variant", palette=palette(swept["variant"]),
                     errorbar="sd", marker="o", ax=ax)
        ax.set(title=title, xlabel=factor.removeprefix("config."), ylabel="drop rate")
        legend_outside(ax)
    return fig


def drop_by_position(positions: pd.DataFrame, colors: dict[str, tuple]) -> Figure | None:
    """Evaluation drop rate at each sequence position; band: +-1 std over seeds."""
    if positions.empty:
        return None
    fig = _figure(9, 4.5)
    ax = fig.subplots()
    sns.lineplot(data=positions, x="position", y="drop_rate", hue="setup", palette=colors,
                 errorbar="sd", ax=ax)
    ax.set(xlabel="position in the sequence", ylabel="drop rate")
    legend_outside(ax)
    return fig


def heatmap_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each setup's first run (lowest seed, then run id), for
    setups with at most MAX_EXPERTS_SHOWN experts."""
    firsts = frame[["setup", "seed", "run_id"]].drop_duplicates().sort_values(["seed", "run_id"])
    frame = frame[frame["run_id"].isin(firsts.groupby("setup").head(1)["run_id"])]
    return frame[frame.groupby("setup")["expert"].transform("nunique") <= MAX_EXPERTS_SHOWN]


def _cell_ticks(axis: Axis, labels: np.ndarray, inches: float) -> tuple[np.ndarray, np.ndarray]:
    """Seaborn's automatic heatmap ticks: every n-th cell's label, n as small
    as lets the labels' font size fit ``inches``."""
    fontsize = axis.set_ticks([0])[0].label1.get_size()
    fitting = int(inches // (fontsize / 72))
    if fitting < 1:
        return np.array([]), labels[:0]
    every = len(labels) // fitting + 1
    return np.arange(0, len(labels), every) + 0.5, labels[::every]


def _overlap(labels: list[Text], renderer: RendererBase) -> bool:
    boxes = [label.get_window_extent(renderer) for label in labels]
    return any(box.count_overlaps(boxes) > 1 for box in boxes)


def heatmap(ax: Axes, matrix: pd.DataFrame, renderer: RendererBase, **style: object) -> None:
    """sns.heatmap of ``matrix`` with seaborn's tick labels, measured with
    ``renderer`` (see the module doc): x labels turn vertical and y labels
    horizontal where they would overlap."""
    sns.heatmap(matrix, ax=ax, xticklabels=False, yticklabels=False, **style)
    inches = ax.get_window_extent().transformed(ax.get_figure().dpi_scale_trans.inverted())
    xticks, xlabels = _cell_ticks(ax.xaxis, matrix.columns.to_numpy(), inches.width)
    yticks, ylabels = _cell_ticks(ax.yaxis, matrix.index.to_numpy(), inches.height)
    ax.set(xticks=xticks, yticks=yticks)
    xtl = ax.set_xticklabels(xlabels)
    ytl = ax.set_yticklabels(ylabels, rotation="vertical", va="center")
    if _overlap(xtl, renderer):
        for label in xtl:
            label.set_rotation("vertical")
    if _overlap(ytl, renderer):
        for label in ytl:
            label.set_rotation("horizontal")


def _heatmap_grid(panels: list[tuple[str, pd.DataFrame]], columns: int, label: str,
                  vmax: float, panel_size: tuple[float, float]) -> Figure:
    """Heatmaps on one colour scale from 0 to ``vmax``, ``columns`` per row."""
    rows = math.ceil(len(panels) / columns)
    fig = _figure(panel_size[0] * columns + 1, panel_size[1] * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    # The renderer matplotlib would save the figure with, made once: text
    # extents depend on its dpi only.
    renderer = RendererAgg(int(fig.bbox.width), int(fig.bbox.height), fig.dpi)
    for ax, (title, matrix) in zip(axes, panels):
        heatmap(ax, matrix, renderer, vmin=0, vmax=vmax, cmap="viridis", cbar=False)
        ax.set_title(title, fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.colorbar(axes[0].collections[0], ax=list(axes), label=label, shrink=0.6)
    return fig


def expert_load(loads: pd.DataFrame) -> Figure | None:
    """Per setup, each expert's evaluation load over the layer's mean load."""
    loads = heatmap_runs(loads)
    if loads.empty:
        return None
    mean = loads.groupby(["setup", "layer"])["load"].transform("mean")
    loads = loads.assign(relative=loads["load"] / mean).rename(columns={"layer": "MoE layer"})
    panels = [(f"{setup} (seed {group['seed'].iloc[0]})",
               group.pivot(index="expert", columns="MoE layer", values="relative"))
              for setup, group in loads.groupby("setup")]
    vmax = max(2.0, float(loads["relative"].max()))
    return _heatmap_grid(panels, min(GRID_COLUMNS, len(panels)), "load / mean load", vmax, (3, 4))


def specialization(clusters: pd.DataFrame) -> Figure | None:
    """Per setup and layer, where each cluster's tokens go: the share of a
    cluster's tokens whose top expert is e (each row sums to 1)."""
    clusters = heatmap_runs(clusters)
    if clusters.empty:
        return None
    share = clusters["count"] / clusters.groupby(["setup", "layer", "cluster"])["count"].transform("sum")
    clusters = clusters.assign(share=share.fillna(0.0))
    panels = [(f"{setup} (seed {group['seed'].iloc[0]}), MoE layer {layer}",
               group.pivot(index="cluster", columns="expert", values="share"))
              for (setup, layer), group in clusters.groupby(["setup", "layer"])]
    layers = clusters["layer"].nunique()
    return _heatmap_grid(panels, layers, "share of the cluster's tokens", 1.0, (3.5, 3))


def task_figures(results: Results, summary: pd.DataFrame,
                 references: pd.DataFrame) -> list[tuple[str, str, Figure]]:
    """(name, caption, figure) of every figure the records of each task
    allow; ``references`` are the reference rows of
    :func:`moebench.reporting.references.reference_rows`."""
    out = []
    with sns.axes_style("whitegrid"):
        for task in sorted(results.runs["task"].unique()):
            def of(frame: pd.DataFrame) -> pd.DataFrame:
                return frame[frame["task"] == task]

            runs = of(results.runs)
            colors = palette(runs["setup"])
            candidates = [
                ("quality_vs_flops", "quality against forward FLOPs per token (mean and 95% CI over "
                 "seeds; dashed: Pareto front of the ranked routers; X: reference rows; grey lines: "
                 "count models and oracle routing)", quality_vs_flops(of(summary), colors, of(references))),
                ("quality_vs_rank_load", "quality against the per-process load under expert "
                 "parallelism: rows of the busiest of P = moe.comm_ranks processes (experts placed "
                 "contiguously) over the mean (point: mean over seeds; bars: lowest to highest seed; "
                 "X: reference rows)", quality_vs_rank_load(runs, of(summary), colors)),
                ("quality_curves", "quality during training against training tokens (line: mean "
                 "over seeds; band: min to max over seeds; grey lines: count models and oracle routing)",
                 quality_curves(of(results.curves), runs, colors, of(references))),
                ("quality_vs_train_flops", "quality during training against training FLOPs (3x the "
                 "forward FLOPs as executed; line: mean over seeds; band: min to max over seeds; "
                 "grey lines: count models and oracle routing)",
                 quality_vs_train_flops(of(results.curves), runs, colors, of(references))),
                ("train_loss", "training loss against training tokens, each point the mean over a "
                 "bucket of steps (line: mean over seeds; band: min to max over seeds)",
                 train_loss_curves(of(results.train_losses), colors)),
                ("expert_load", "load of each expert (rows) in each MoE layer (columns) during "
                 f"evaluation, over the layer's mean load; lowest seed; setups with over "
                 f"{MAX_EXPERTS_SHOWN} experts left out", expert_load(of(results.loads))),
                ("drop_vs_capacity", "drop rate against the capacity factor", drop_vs_capacity(runs)),
                ("drop_by_position", "evaluation drop rate by sequence position",
                 drop_by_position(of(results.positions), colors)),
                ("specialization", "where each cluster's tokens go: share routed to each expert "
                 f"(top-1), per MoE layer; lowest seed; setups with over {MAX_EXPERTS_SHOWN} experts "
                 "left out", specialization(of(results.clusters))),
            ]
            out += [(f"{task}-{name}", f"{task}: {caption}", fig)
                    for name, caption, fig in candidates if fig is not None]
    return out


def paired_forest(paired: pd.DataFrame, colors: dict[str, tuple]) -> Figure | None:
    """Forest plot of one task's paired differences to dense (active)
    (:mod:`moebench.reporting.paired`): per router, the mean per-seed
    difference and its 95% paired Student-t interval (a bare point with one
    paired seed), a line at 0 and the better side labelled; the title says
    when the table is not ranked."""
    rows = paired[(paired["against"] == AGAINST_DENSE) & (paired["seeds"] > 0)]
    if rows.empty:
        return None
    first = rows.iloc[0]
    fig = _figure(8, 1.5 + 0.35 * len(rows))
    ax = fig.subplots()
    for y, row in enumerate(rows.itertuples()):
        half = None if math.isnan(row.difference_ci95) else row.difference_ci95
        ax.errorbar(row.difference_mean, y, xerr=half, fmt="o", color=colors[row.setup], capsize=3)
    ax.axvline(0, color="0.3", linewidth=1, zorder=0)
    ax.set_yticks(range(len(rows)), rows["setup"])
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the table's order, best first, half a row's margin
    ax.set(xlabel=f"{first['quality_metric']} − {first['baseline']}, paired by seed\n"
                  "(mean and 95% paired t interval)")
    if first["higher_is_better"]:
        ax.set_title("better →", loc="right")
    else:
        ax.set_title("← better", loc="left")
    if not first["ranked"]:
        fig.suptitle("not ranked: not past the count models", fontsize="medium")
    return fig


def paired_figures(paired: pd.DataFrame, runs: pd.DataFrame) -> list[tuple[str, str, Figure]]:
    """(name, caption, figure) of each task's forest plot of ``paired``, in the
    colours of the task's other figures (``runs``: its completed runs)."""
    out = []
    with sns.axes_style("whitegrid"):
        for task, rows in paired.groupby("task", sort=True):
            fig = paired_forest(rows, palette(runs.loc[runs["task"] == task, "setup"]))
            if fig is not None:
                caption = (f"{task}: paired difference in quality to dense (active) per router "
                           "(mean over seeds, 95% paired Student-t interval)")
                out.append((f"{task}-paired_differences", caption, fig))
    return out
