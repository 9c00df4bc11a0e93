"""The leaderboard: every run record under ``results/`` -> ``reports/``.

    python -m moebench.leaderboard [--results results] [--out reports]

writes ``leaderboard.md`` (per task, routers ranked by quality, mean and 95%
CI over seeds, with drop rate, load balance, FLOPs, parameters and speed),
``leaderboard.csv`` (the same, unformatted), ``index.html`` (tables and
figures on one self-contained page) and ``figures/*.svg``. The output is a
pure function of the records: regenerating gives byte-identical files.
Only completed runs are ranked; diverged and interrupted runs are counted in
a note under their task's table. The files are replaced all together or not
at all (:mod:`moebench.reporting.output`), and never by a leaderboard of no
records. A sweep ends with a fresh leaderboard when
:class:`LeaderboardCallback` is among Hydra's callbacks.
"""

from __future__ import annotations

import argparse
import html
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from moebench.cli import fail
from moebench.errors import ConfigError
from moebench.reporting.figures import task_figures
from moebench.reporting.output import write_files
from moebench.reporting.ranking import LEAK_TOLERANCE, RANK_RULE, REFERENCE_ROUTERS, mean_ci, summarize
from moebench.reporting.render import (
    figure_svg, html_figure, html_page, html_table, markdown_table, mean_and_interval, si,
)
from moebench.results import Results, load_results

log = logging.getLogger(__name__)

TITLE = "moebench leaderboard"
Section = tuple[str, "pd.DataFrame | None", list[str]]  # task, its table (None: no run completed), notes


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One task's summary as the strings the Markdown and HTML tables show."""
    metric = summary["quality_metric"].iloc[0]

    def percent(value: float) -> str:
        return "" if pd.isna(value) else f"{100 * value:.1f}%"

    return pd.DataFrame({
        "rank": [("leaky" if leaky else "ref" if pd.isna(r) else str(r))
                 for r, leaky in zip(summary["rank"], summary["leaky"])],
        "router": summary["setup"],
        "seeds": summary["seeds"].astype(str),
        f"{metric} (mean ± 95% CI)": [mean_and_interval(m, ci) for m, ci in
                                      zip(summary["quality_mean"], summary["quality_ci95"])],
        "drop rate": summary["drop_rate"].map(percent),
        "load CV": summary["load_cv"].map(lambda v: si(v, 3)),
        "max/mean load": summary["load_max_over_mean"].map(lambda v: si(v, 3)),
        "FLOPs/token": summary["flops_per_token"].map(si),
        "active params": summary["active_params"].map(si),
        "tokens/s": summary["train_tokens_per_s"].map(lambda v: si(v, 3)),
    })


def task_notes(runs: pd.DataFrame) -> list[str]:
    """What a reader of one task's table must know: direction, exclusions."""
    metric, higher_is_better = runs["quality_metric"].iloc[0], runs["higher_is_better"].iloc[0]
    notes = [f"{'Higher' if higher_is_better else 'Lower'} {metric} is better."]
    completed = runs[runs["status"] == "completed"]
    if "oracle_quality" in completed and completed["oracle_quality"].notna().any():
        # The oracle trains beside every run at its budget: one value per seed.
        per_seed = completed.groupby("seed")["oracle_quality"].mean().dropna()
        mean, ci = mean_ci(per_seed)
        notes.append(f"Oracle routing (each token to its true cluster's expert, same model and "
                     f"budget): {metric} {mean_and_interval(mean, ci)} over {len(per_seed)} seed(s).")
    left_out = runs[runs["status"] != "completed"]
    if not left_out.empty:
        counts = left_out["status"].value_counts().sort_index()
        listed = ", ".join(f"{r.setup} seed {r.seed}" for r in left_out.itertuples())
        notes.append("Not ranked: " + ", ".join(f"{n} {status}" for status, n in counts.items())
                     + f" run(s) ({listed}).")
    return notes


def general_notes(skipped: tuple[tuple[str, str], ...]) -> list[str]:
    notes = [RANK_RULE, f"Reference rows (rank 'ref'; {', '.join(REFERENCE_ROUTERS)}) are shown "
             "for comparison and not ranked: the dense baselines do not route, the oracle routes "
             "by the true cluster. Rows ranked 'leaky' are not ranked either: their measured "
             f"causal_leak exceeded {LEAK_TOLERANCE:g}, so a position saw later tokens of its "
             "sequence and the quality is not a fair language-modelling number. Other columns "
             "are means over seeds; drop rate and load are measured in evaluation, tokens/s in "
             "training."]
    notes += [f"Skipped {path}: {reason}." for path, reason in skipped]
    return notes


def task_sections(results: Results, summary: pd.DataFrame) -> list[Section]:
    sections = []
    for task in sorted(results.runs["task"].unique()):
        rows = summary[summary["task"] == task]
        sections.append((task, None if rows.empty else display_table(rows),
                         task_notes(results.runs[results.runs["task"] == task])))
    return sections


def markdown(title: str, notes: list[str], sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for note in notes:
        lines += [note, ""]
    for task, table, remarks in sections:
        lines += [f"## {task}", ""]
        if table is not None:
            lines += [markdown_table(table), ""]
        lines += [f"{note}  " for note in remarks] + [""]  # two spaces: a line break
    return "\n".join(lines).rstrip() + "\n"


def html_report(title: str, notes: list[str], sections: list[Section],
                figures: list[tuple[str, str, bytes]]) -> str:
    blocks = [f'<p class="note">{html.escape(note)}</p>' for note in notes]
    for task, table, remarks in sections:
        blocks.append(f"<h2>{html.escape(task)}</h2>")
        if table is not None:
            blocks.append(html_table(table))
        blocks += [f'<p class="note">{html.escape(note)}</p>' for note in remarks]
    if figures:
        blocks.append("<h2>Figures</h2>")
        blocks += [html_figure(caption, svg) for _, caption, svg in figures]
    return html_page(title, blocks)


def write_reports(results: Results, out: Path, title: str = TITLE) -> list[Path]:
    """Write the leaderboard files and figures of ``results`` into ``out``,
    removing figures of tasks no longer in the results; all or nothing."""
    ranked = results.where(results.runs["status"] == "completed")
    summary = summarize(ranked.runs)
    figures = [(name, caption, figure_svg(fig)) for name, caption, fig in task_figures(ranked, summary)]
    notes, sections = general_notes(results.skipped), task_sections(results, summary)
    files = {"leaderboard.md": markdown(title, notes, sections).encode(),
             "leaderboard.csv": summary.to_csv(index=False, lineterminator="\n").encode(),
             "index.html": html_report(title, notes, sections, figures).encode(),
             **{f"figures/{name}.svg": svg for name, _, svg in figures}}
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


def build(results_dir: str | Path, out: str | Path) -> list[Path]:
    """Load every record under ``results_dir`` and write the leaderboard to ``out``."""
    return write_reports(load(results_dir), Path(out))


def check_results_dir(path: str) -> None:
    if not Path(path).is_dir():
        fail(str(ConfigError("--results", path, "an existing folder of run records")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moebench.leaderboard",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results", help="folder of run records, read recursively "
                        "(results/bench and results/baselines are not records); default: results")
    parser.add_argument("--out", default="reports", help="output folder; default: reports")
    args = parser.parse_args(argv)
    check_results_dir(args.results)
    try:
        written = build(args.results, args.out)
    except ConfigError as e:
        fail(f"{e} ({args.out}/ left as it is)")
    print(f"wrote {len(written)} files to {args.out}/")


class LeaderboardCallback(Callback):
    """Regenerates the leaderboard when a Hydra sweep ends. In conf/config.yaml:

        hydra:
          callbacks:
            leaderboard:
              _target_: moebench.leaderboard.LeaderboardCallback
              results: results
              out: reports

    Relative paths are taken from the directory the sweep was started in.
    """

    def __init__(self, results: str = "results", out: str = "reports") -> None:
        self.results, self.out = results, out

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        cwd = Path(config.hydra.runtime.cwd)
        written = build(cwd / self.results, cwd / self.out)
        log.info("leaderboard: wrote %d files to %s", len(written), cwd / self.out)


if __name__ == "__main__":
    main()
