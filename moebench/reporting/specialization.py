"""What each expert learned, per language-modelling task: the leaderboard's
expert-token tables and specialization-stability figures.

* A table per task: for each router (its lowest-seed run: expert indices are
  arbitrary per seed, so seeds cannot pool), each expert of the first and the
  last MoE layer, its evaluation load share and its :data:`TOKENS_SHOWN` most
  over-represented tokens (``per_layer[i].expert_tokens``: lift = P(token |
  expert) / P(token), moebench/metrics/expert_tokens.py), decoded to text with
  the task's vocabulary, which is read from the data sets (the leaderboard's
  ``--data``); where they are missing the tokens show as ids, and a note says why.
* A figure per task: ``expert_agreement`` at each evaluation (the share of
  evaluation tokens whose id kept its modal expert since the previous
  evaluation, mean over MoE layers), one line per router, mean over seeds.

Records from before these fields give neither: their tasks are skipped.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from moebench.config import DataConfig
from moebench.errors import ConfigError, DataError
from moebench.metrics.expert_tokens import MIN_COUNT
from moebench.reporting.figures import legend_outside, spread_figure, palette, seed_spread
from moebench.reporting.render import html_table, markdown_table
from moebench.results import Results
from moebench.tasks import TASKS
from moebench.tasks.lm import LMTask

TITLE = "What each expert learned"
TOKENS_SHOWN = 5
TOKENS_COLUMN = "top tokens: ×lift (count)"
RULE = (f"Per router (its lowest seed: expert numbers are arbitrary per seed), each expert of the "
        f"first and the last MoE layer: its share of the layer's assignments in evaluation (load) "
        f"and the {TOKENS_SHOWN} tokens most over-represented among the tokens whose top expert it "
        f"is, as token ×lift (count): lift = P(token | expert) / P(token) over the evaluation's "
        f"tokens, 1 where the expert takes the token as often as any, E where only it does at equal "
        f"loads; listed where the lift exceeds 1 and the token reached the expert at least "
        f"{MIN_COUNT} times (one hit of a rare token would top every list). Tokens are shown as "
        f"Python string literals, so spaces and newlines are visible.")
# task, its table, the notes under it
ExpertSection = tuple[str, pd.DataFrame, list[str]]


def task_vocabulary(task: str, data: DataConfig) -> list[str]:
    """Each token id's text of a language-modelling ``task``, from the data sets."""
    return TASKS.get(task).cls.vocabulary(data)


def language_tasks(results: Results) -> list[str]:
    """The language-modelling tasks among ``results`` whose records list expert tokens."""
    return sorted(task for task in results.expert_tokens["task"].unique()
                  if task in TASKS.names() and issubclass(TASKS.get(task).cls, LMTask))


def expert_sections(results: Results, data: DataConfig,
                    vocabulary: Callable[[str, DataConfig], list[str]] = task_vocabulary,
                    ) -> list[ExpertSection]:
    """A section per language-modelling task of ``results`` (completed runs)
    whose records list expert tokens; ``vocabulary(task, data)`` decodes them."""
    sections = []
    for task in language_tasks(results):
        notes, texts = [RULE], None
        try:
            texts = vocabulary(task, data)
        except (DataError, ConfigError) as e:
            notes.append(f"Tokens shown as ids (#12): the vocabulary was not read ({e}); "
                         "`moebench-leaderboard --data PATH` reads it from the data sets.")
        sections.append((task, expert_table(results, task, decoder(texts)), notes))
    return sections


def decoder(texts: list[str] | None) -> Callable[[int], str]:
    """A token id's text as a Python string literal, or its id (#12) where ``texts`` lack it."""
    return lambda token: repr(texts[token]) if texts is not None and token < len(texts) else f"#{token}"


def expert_table(results: Results, task: str, decode: Callable[[int], str]) -> pd.DataFrame:
    """One task's rows: router, layer, expert, load share, top tokens."""
    tokens = results.expert_tokens[results.expert_tokens["task"] == task]
    first_runs = tokens.sort_values(["setup", "seed"]).groupby("setup")["run_id"].first()
    rows = []
    for setup, run_id in first_runs.items():
        of_run = tokens[tokens["run_id"] == run_id]
        layers = sorted({of_run["layer"].min(), of_run["layer"].max()})
        loads = results.loads[results.loads["run_id"] == run_id]
        for layer in layers:
            load_E = loads[loads["layer"] == layer].set_index("expert")["load"]
            listed = of_run[(of_run["layer"] == layer) & (of_run["rank"] < TOKENS_SHOWN)]
            for expert, load in load_E.items():
                top = listed[listed["expert"] == expert]
                shown = [f"{decode(int(t))} ×{lift:.2f} ({int(n)})"
                         for t, lift, n in zip(top["token"], top["lift"], top["count"])]
                rows.append({"router": setup, "layer": str(layer), "expert": str(expert),
                             "load": f"{100 * load / load_E.sum():.1f}%", TOKENS_COLUMN: ", ".join(shown)})
    return pd.DataFrame(rows)


def markdown_lines(sections: list[ExpertSection]) -> list[str]:
    """The sections in Markdown, under one heading; nothing without sections."""
    if not sections:
        return []
    lines = [f"## {TITLE}", ""]
    for task, table, notes in sections:
        lines += [f"### {task}", "", markdown_table(table), ""] + [f"{note}  " for note in notes] + [""]
    return lines


def html_blocks(sections: list[ExpertSection]) -> list[str]:
    """The sections as HTML snippets, under one heading; nothing without sections."""
    if not sections:
        return []
    blocks = [f"<h2>{html.escape(TITLE)}</h2>"]
    for task, table, notes in sections:
        blocks += [f"<h3>{html.escape(task)}</h3>", html_table(table)]
        blocks += [f'<p class="note">{html.escape(note)}</p>' for note in notes]
    return blocks


def stability_figures(results: Results) -> list[tuple[str, str, Figure]]:
    """(name, caption, figure) per task whose records hold ``expert_agreement``:
    against the step, a line per router (mean over seeds; band: min to max)."""
    curves = results.curves
    if "expert_agreement" not in curves:
        return []
    out = []
    with sns.axes_style("whitegrid"):
        for task in sorted(curves["task"].unique()):
            of_task = curves[curves["task"] == task]
            if of_task["expert_agreement"].isna().all():
                continue
            colors = palette(results.runs.loc[results.runs["task"] == task, "setup"])
            fig, ax = spread_figure(seed_spread(of_task, "step", "expert_agreement"), colors,
                                     "training step", "expert agreement with the previous evaluation", "o")
            ax.set_ylim(0, 1.02)
            legend_outside(ax)
            out.append((f"{task}-expert_agreement",
                        f"{task}: specialization stability: the share of evaluation tokens whose token "
                        "id kept its most frequent expert since the previous evaluation (mean over MoE "
                        "layers; line: mean over seeds; band: min to max over seeds)", fig))
    return out
