"""The leaderboard: every run record under ``results/`` -> ``reports/``.

    moebench-leaderboard [--results results] [--out reports]   (moebench/commands/leaderboard.py)

writes ``leaderboard.md`` (per task, routers ranked by quality, mean and 95%
CI over seeds, with drop rate, load balance, communication under expert
parallelism, FLOPs, parameters and speed),
``leaderboard.csv`` (the same, unformatted), ``index.html`` (tables and
figures on one self-contained page) and ``figures/*.svg``. At the top: the
commits the records came from (:mod:`moebench.reporting.provenance`) and
which router to use across tasks (``cross_task.csv``,
:mod:`moebench.reporting.crosstask`); after the tasks, each router's paired
differences to dense (active) and to the best router (``paired.csv``, forest
plots; :mod:`moebench.reporting.paired`). Every table also
shows reference rows, never ranked: the count models (unigram, bigram,
Kneser-Ney trigram; the majority class on the synthetic task) scored on the
runs' own evaluation tokens, read from the data sets under ``--data``
(default ``$MOEBENCH_DATA``), and oracle routing on the synthetic task. A
table whose dense (active) baseline is not clearly better than the best
count model ranks nothing (:mod:`moebench.reporting.guard`). The output is a
pure function of the records and the data files: regenerating gives
byte-identical files. Only completed runs are ranked; diverged and
interrupted runs are counted in a note under their task's table. The files
are replaced all together or not at all (:mod:`moebench.reporting.output`),
and never by a leaderboard of no records. A sweep ends with a fresh leaderboard when
:class:`moebench.commands.leaderboard.LeaderboardCallback` is among Hydra's callbacks.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from moebench.config import DataConfig
from moebench.errors import ConfigError
from moebench.reporting.crosstask import (
    CrossTask, cross_task_notes, cross_task_summary, cross_task_table,
)
from moebench.reporting.figures import paired_figures, task_figures
from moebench.reporting.guard import GUARD_RULE, Verdict, apply_guard
from moebench.reporting.output import write_files
from moebench.reporting.paired import PAIRED_RULE, paired_differences, paired_table
from moebench.reporting.provenance import provenance_line
from moebench.reporting.ranking import COMM_METRICS, COMM_RANKS, LEAK_TOLERANCE, RANK_RULE, summarize
from moebench.reporting.references import COUNT_MODEL, ORACLE, reference_rows
from moebench.reporting.render import (
    exact, figure_svg, html_figure, html_page, html_table, markdown_table, mean_and_interval, si,
)
from moebench.reporting.specialization import (
    ExpertSection, expert_sections, html_blocks, markdown_lines, stability_figures,
)
from moebench.results import Results, load_results
from moebench.routers import ROUTERS
from moebench.routers.base import Router
from moebench.tasks.data import default_data

TITLE = "moebench leaderboard"
# task, its table (None: no run completed), the line above it (the guard's mark), notes below it
Section = tuple[str, "pd.DataFrame | None", "str | None", list[str]]
# the provenance line, the cross-task table (None: no task entered), the notes under it
Lead = tuple[str, "pd.DataFrame | None", list[str]]
# task, the line above its table (not ranked), its paired differences, its forest plot (name, caption, svg)
PairedSection = tuple[str, "str | None", pd.DataFrame, "tuple[str, str, bytes] | None"]
PAIRED_TITLE, CROSS_TASK_TITLE = "Paired differences to dense (active)", "Which router should I use?"
NOTES_TITLE = "How the tables are made"
NOT_RECORDED = "—"  # a communication cell of a setup whose records predate the metrics
COMMUNICATION_RULE = (
    "Communication: what each router's routing would exchange if the experts were sharded over P "
    "processes (P = moe.comm_ranks, stated under each table), placed contiguously: the batch's tokens "
    "split evenly over the processes in order, and process p holding experts p E/P to (p+1) E/P - 1; "
    "measured in evaluation, averaged over batches and MoE layers. A row is a kept assignment (a token "
    "kept by two experts is two rows) or a Soft MoE slot. 'all-to-all bytes/token': bytes sent between "
    "processes by the dispatch and the combine all-to-alls together, per token, at the model's dtype; "
    "'remote rows': the share of rows whose expert is on another process; 'max/mean rank load': the "
    "rows of the busiest process's experts over the mean per process (1 = even, P = all on one): that "
    f"process finishes last and sets the step's time. {NOT_RECORDED}: the setup's records were made "
    "before moebench measured communication; blank: nothing to exchange (the dense baselines, PEER, "
    "muMoE) or not a run (count models, oracle routing). A table none of whose runs measured communication "
    "leaves the three columns out.")


def _percent(value: float) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}%"


def _three_digits(value: float) -> str:
    return si(value, 3)


# Table header -> (summary column, its format), shown after the load columns.
COMM_COLUMNS = {"all-to-all bytes/token": ("comm_bytes_per_token", _three_digits),
                "remote rows": ("comm_remote_share", _percent),
                "max/mean rank load": ("comm_rank_load_max_over_mean", _three_digits)}


def sends_rows(router: str) -> bool:
    """Whether the router's records measure communication (routers/base.py,
    ``Router.sends_rows``): not the dense baselines, PEER, muMoE, nor the
    count-model and oracle-routing rows; a router this moebench does not
    know may."""
    if router in (COUNT_MODEL, ORACLE):
        return False
    if router not in ROUTERS.names():
        return True
    cls = ROUTERS.get(router).cls
    return issubclass(cls, Router) and cls.sends_rows


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One task's summary and reference rows as the strings the Markdown and
    HTML tables show. Ranks: a number, ``ref`` (reference rows), ``leaky``,
    ``below counts`` (a setup not better than the count models) or
    ``unranked`` (a table not past the count models). The communication
    columns are left out where no row has them."""
    metric = summary["quality_metric"].iloc[0]
    counted = summary["router"] == COUNT_MODEL  # exact numbers: no seeds, no interval
    # Setups whose every record predates the communication metrics (and
    # moe.comm_ranks), of a router that has rows to exchange.
    predates = summary["comm_ranks"].isna() & summary["router"].map(sends_rows)

    def communication(column: str, shown: Callable[[float], str]) -> list[str]:
        return [NOT_RECORDED if old and pd.isna(value) else shown(value)
                for value, old in zip(summary[column], predates)]

    return pd.DataFrame({
        "rank": [("leaky" if leaky else "ref" if reference else "below counts" if below
                  else "unranked" if pd.isna(r) else str(r))
                 for r, leaky, reference, below in zip(summary["rank"], summary["leaky"], summary["reference"],
                                                       summary["below_count_models"].eq(True))],
        "router": summary["setup"],
        "seeds": ["" if c else str(n) for c, n in zip(counted, summary["seeds"])],
        f"{metric} (mean ± 95% CI)": [exact(m) if c else mean_and_interval(m, ci) for m, ci, c in
                                      zip(summary["quality_mean"], summary["quality_ci95"], counted)],
        "drop rate": summary["drop_rate"].map(_percent),
        "load CV": summary["load_cv"].map(_three_digits),
        "max/mean load": summary["load_max_over_mean"].map(_three_digits),
        **{header: communication(column, shown) for header, (column, shown) in COMM_COLUMNS.items()
           if summary[column].notna().any()},
        "FLOPs/token": summary["flops_per_token"].map(si),
        "active params": summary["active_params"].map(si),
        "FLOPs spent / budget": summary["budget_spent"].map(_percent),
        "tokens/s": summary["train_tokens_per_s"].map(_three_digits),
    })


def task_notes(runs: pd.DataFrame) -> list[str]:
    """What a reader of one task's table must know: direction, exclusions,
    and the processes its communication columns assume."""
    metric, higher_is_better = runs["quality_metric"].iloc[0], runs["higher_is_better"].iloc[0]
    notes = [f"{'Higher' if higher_is_better else 'Lower'} {metric} is better."]
    left_out = runs[runs["status"] != "completed"]
    if not left_out.empty:
        counts = left_out["status"].value_counts().sort_index()
        listed = ", ".join(f"{r.setup} seed {r.seed}" for r in left_out.itertuples())
        notes.append("Not ranked: " + ", ".join(f"{n} {status}" for status, n in counts.items())
                     + f" run(s) ({listed}).")
    return notes + communication_notes(runs[runs["status"] == "completed"])


def communication_notes(runs: pd.DataFrame) -> list[str]:
    """For one task's completed ``runs``, whose table shows communication:
    the P it assumes, and the setups whose communication cells average fewer
    seeds than their quality (some of their records predate the metrics)."""
    if COMM_METRICS[0] not in runs or runs[COMM_METRICS[0]].isna().all():
        return []  # the table leaves the columns out
    measured = runs.dropna(subset=[COMM_METRICS[0]])
    ranks = ", ".join(str(int(p)) for p in sorted(measured[COMM_RANKS].dropna().unique()))
    notes = [f"Communication columns: P = {ranks} simulated processes (moe.comm_ranks)."]
    seeds, measured_seeds = (frame.groupby("setup")["seed"].nunique() for frame in (runs, measured))
    partial = [f"{setup} ({n} of {seeds[setup]} seeds)" for setup, n in measured_seeds.items()
               if n < seeds[setup]]
    if partial:
        notes.append("Communication averaged over the seeds whose records hold it: "
                     + ", ".join(partial) + ".")
    return notes


def general_notes(skipped: tuple[tuple[str, str], ...]) -> list[str]:
    notes = [RANK_RULE, "Reference rows (rank 'ref') are shown for comparison and not ranked: the "
             "dense baselines (dense, dense_total) do not route; the oracle router, and on the "
             "synthetic task the 'oracle routing' row (the same model and budget, trained beside each "
             "run), route by the true cluster, which no router can see; the count models (an add-one "
             "unigram, an add-0.1 bigram and an interpolated modified Kneser-Ney trigram; on the "
             "synthetic task, the majority class) are fitted on the training split and scored on the "
             "tokens the runs were evaluated on: what counting alone achieves. " + GUARD_RULE
             + " Rows ranked 'leaky' are not ranked either: their measured "
             f"causal_leak exceeded {LEAK_TOLERANCE:g}, so a position saw later tokens of its "
             "sequence and the quality is not a fair language-modelling number. Other columns "
             "are means over seeds; drop rate, load and communication are measured in evaluation, "
             "tokens/s in training. FLOPs spent / budget: the training FLOPs a run spent (3x the "
             "forward FLOPs as executed, summed over its steps) over its task's trainer.max_train_flops, "
             "which a run spends to within half a step (moebench/schedule.py); records made before "
             "that fixed their steps from an estimate at initialization and may differ more.",
             COMMUNICATION_RULE]
    notes += [f"Skipped {path}: {reason}." for path, reason in skipped]
    return notes


def with_references(summary: pd.DataFrame, references: pd.DataFrame,
                    verdicts: dict[str, Verdict]) -> pd.DataFrame:
    """The summary with each task's reference rows after its own, and the
    guard's verdict on every row (``past_count_models``: empty where not checked)."""
    references = references.assign(rank=pd.array([pd.NA] * len(references), dtype="Int64"))
    parts = [frame for task in sorted(summary["task"].unique())
             for frame in (summary[summary["task"] == task], references[references["task"] == task])
             if not frame.empty]
    table = pd.concat(parts, ignore_index=True) if parts else summary
    return table.assign(past_count_models=table["task"].map(lambda task: verdicts[task].passed))


def task_sections(results: Results, table: pd.DataFrame, verdicts: dict[str, Verdict],
                  reference_notes: dict[str, list[str]]) -> list[Section]:
    sections = []
    for task in sorted(results.runs["task"].unique()):
        rows = table[table["task"] == task]
        verdict = verdicts.get(task)
        notes = task_notes(results.runs[results.runs["task"] == task]) + reference_notes.get(task, [])
        if verdict is not None and verdict.passed is not False:
            notes.append(verdict.text)
        mark = verdict.text if verdict is not None and verdict.passed is False else None
        sections.append((task, None if rows.empty else display_table(rows), mark, notes))
    return sections


def lead(runs: pd.DataFrame, cross_task: CrossTask) -> Lead:
    """What the page opens with: where all ``runs`` came from, and which router to use."""
    table = cross_task_table(cross_task) if cross_task.tasks else None
    return provenance_line(runs), table, cross_task_notes(cross_task)


def paired_sections(paired: pd.DataFrame, summary: pd.DataFrame,
                    forests: list[tuple[str, str, bytes]]) -> list[PairedSection]:
    """Per task with paired differences, its table (the summary's order) and forest plot."""
    by_name = {forest[0]: forest for forest in forests}
    sections = []
    for task, rows in paired.groupby("task", sort=True):
        of_task = summary[(summary["task"] == task) & ~summary["reference"].astype(bool)]
        mark = None if rows["ranked"].any() else ("Not ranked (not past the count models): the differences "
                                                  "are shown for information.")
        sections.append((task, mark, paired_table(rows, of_task["setup"].tolist()),
                         by_name.get(f"{task}-paired_differences")))
    return sections


def markdown(title: str, notes: list[str], sections: list[Section], top: Lead,
             paired: list[PairedSection], learned: list[ExpertSection]) -> str:
    provenance, cross_task, cross_notes = top
    lines = [f"# {title}", "", provenance, "", f"## {CROSS_TASK_TITLE}", ""]
    if cross_task is not None:
        lines += [markdown_table(cross_task), ""]
    lines += [f"{note}  " for note in cross_notes] + ["", f"## {NOTES_TITLE}", ""]
    for note in notes:
        lines += [note, ""]
    for task, table, mark, remarks in sections:
        lines += [f"## {task}", ""]
        if mark is not None:
            lines += [f"**{mark}**", ""]
        if table is not None:
            lines += [markdown_table(table), ""]
        lines += [f"{note}  " for note in remarks] + [""]  # two spaces: a line break
    if paired:
        lines += [f"## {PAIRED_TITLE}", "", PAIRED_RULE, ""]
    for task, mark, table, _ in paired:
        lines += [f"### {task}", ""] + ([f"**{mark}**", ""] if mark else []) + [markdown_table(table), ""]
    lines += markdown_lines(learned)
    return "\n".join(lines).rstrip() + "\n"


def html_report(title: str, notes: list[str], sections: list[Section],
                figures: list[tuple[str, str, bytes]], top: Lead, paired: list[PairedSection],
                learned: list[ExpertSection]) -> str:
    provenance, cross_task, cross_notes = top
    blocks = [f"<p>{html.escape(provenance)}</p>", f"<h2>{html.escape(CROSS_TASK_TITLE)}</h2>"]
    blocks += [] if cross_task is None else [html_table(cross_task)]
    blocks += [f'<p class="note">{html.escape(note)}</p>' for note in cross_notes]
    blocks.append(f"<h2>{NOTES_TITLE}</h2>")
    blocks += [f'<p class="note">{html.escape(note)}</p>' for note in notes]
    for task, table, mark, remarks in sections:
        blocks.append(f"<h2>{html.escape(task)}</h2>")
        if mark is not None:
            blocks.append(f"<p><strong>{html.escape(mark)}</strong></p>")
        if table is not None:
            blocks.append(html_table(table))
        blocks += [f'<p class="note">{html.escape(note)}</p>' for note in remarks]
    if paired:
        blocks += [f"<h2>{html.escape(PAIRED_TITLE)}</h2>", f'<p class="note">{html.escape(PAIRED_RULE)}</p>']
    for task, mark, table, forest in paired:
        blocks.append(f"<h3>{html.escape(task)}</h3>")
        blocks += [] if mark is None else [f"<p><strong>{html.escape(mark)}</strong></p>"]
        blocks.append(html_table(table))
        blocks += [] if forest is None else [html_figure(forest[1], forest[2])]
    blocks += html_blocks(learned)
    if figures:
        blocks.append("<h2>Figures</h2>")
        blocks += [html_figure(caption, svg) for _, caption, svg in figures]
    return html_page(title, blocks)


def write_reports(results: Results, out: Path, title: str = TITLE,
                  data: DataConfig | None = None) -> list[Path]:
    """Write the leaderboard files and figures of ``results`` into ``out``,
    removing figures of tasks no longer in the results; all or nothing. The
    count-model references come from the data sets of ``data`` (default:
    :func:`default_data`)."""
    ranked = results.where(results.runs["status"] == "completed")
    data = data or default_data()
    references, reference_notes = reference_rows(ranked, data)
    summary, verdicts = apply_guard(summarize(ranked.runs), references)
    table = with_references(summary, references, verdicts)
    figures = [(name, caption, figure_svg(fig)) for name, caption, fig
               in task_figures(ranked, summary, references) + stability_figures(ranked)]
    notes = general_notes(results.skipped)
    sections = task_sections(results, table, verdicts, reference_notes)
    paired = paired_differences(ranked.runs, summary)
    cross_task = cross_task_summary(ranked.runs, summary, paired)
    forests = [(name, caption, figure_svg(fig)) for name, caption, fig in paired_figures(paired, ranked.runs)]
    top, paired_parts = lead(results.runs, cross_task), paired_sections(paired, summary, forests)
    learned = expert_sections(ranked, data)
    files = {"leaderboard.md": markdown(title, notes, sections, top, paired_parts, learned).encode(),
             "leaderboard.csv": table.to_csv(index=False, lineterminator="\n").encode(),
             "paired.csv": paired.to_csv(index=False, lineterminator="\n").encode(),
             "cross_task.csv": cross_task.table.to_csv(index=False, lineterminator="\n").encode(),
             "index.html": html_report(title, notes, sections, figures, top, paired_parts, learned).encode(),
             **{f"figures/{name}.svg": svg for name, _, svg in figures + forests}}
    return write_files(out, files, owned="figures/*.svg")


def report_skipped(results: Results, results_dir: str | Path) -> None:
    for path, reason in results.skipped:
        print(f"skipped {Path(results_dir) / path}: {reason}", file=sys.stderr)


def load(results_dir: str | Path) -> Results:
    """The records under ``results_dir``, skipped files reported on stderr;
    ConfigError when none is valid: an empty or mistyped folder must not
    replace the reports with nothing."""
    results = load_results(results_dir)
    report_skipped(results, results_dir)
    if results.runs.empty:
        raise ConfigError("--results", str(results_dir), "a folder holding at least one valid run record")
    return results


def build(results_dir: str | Path, out: str | Path, data: DataConfig | None = None,
          title: str = TITLE) -> list[Path]:
    """Load every record under ``results_dir`` and write the leaderboard to
    ``out``, with count-model references from the data sets of ``data``."""
    return write_reports(load(results_dir), Path(out), title=title, data=data)
