"""Comparison report for any subset of the results.

    moebench-report task=synthetic router=top1,top2 --out reports/top1-vs-top2
    moebench-report task=synthetic config.moe.capacity_factor=1.0,2.0 --out reports/cf

A selection is ``KEY=VALUE[,VALUE...]`` pairs: a run is selected when, for
every KEY, its value is one of the VALUEs. KEY is a column of the runs frame
of :mod:`moebench.results`: ``task``, ``router`` (``dense`` selects both dense
baselines), ``variant`` (``dense (active)``), ``setup``, ``seed``, ``status``,
``run_id``, ``config.<key>`` for any key of the resolved config (e.g.
``config.moe.capacity_factor``), or a metric. Numbers compare as numbers
(``1`` selects ``1.0``). The report is the leaderboard's set of files (tables,
figures, ``index.html``) for the selected runs; with ``--experts``, the
expert-count report instead (quality against the number of experts, Clark et
al. 2022, Figure 1: ``experts.md``, ``.csv``, ``.svg``;
:mod:`moebench.reporting.experts`); with ``--transfer``, the fine-tuning gap
report (fine-tuned and pretraining quality per router, each with its paired
gap to dense (active): ``transfer.md``, ``.csv``; :mod:`moebench.reporting.transfer`):

    moebench-report --experts --results results/experts --out reports
    moebench-report --transfer --results results/transfer --out reports/transfer
"""

from __future__ import annotations

import argparse
from numbers import Real
from pathlib import Path

import numpy as np
import pandas as pd

from moebench.commands.options import fail
from moebench.errors import ConfigError
from moebench.commands.leaderboard import check_results_dir
from moebench.reporting.leaderboard import load, write_reports
from moebench.reporting.experts import experts_files
from moebench.reporting.transfer import transfer_files
from moebench.reporting.output import write_files
from moebench.results import Results

EXAMPLE = "e.g. task=synthetic router=top1,top2"
KEYS_SHOWN = ("task", "router", "variant", "setup", "seed", "status", "run_id")
# The reports read from their own results folder, by flag: the files they make.
OWN_REPORTS = {"experts": experts_files, "transfer": transfer_files}


def parse_selection(args: list[str]) -> dict[str, list[str]]:
    """``["task=synthetic", "router=top1,top2"]`` -> ``{"task": ["synthetic"], ...}``."""
    selection: dict[str, list[str]] = {}
    for arg in args:
        key, sep, values = arg.partition("=")
        if not sep or not key or not values:
            raise ConfigError("selection", arg, f"KEY=VALUE[,VALUE...] pairs, {EXAMPLE}")
        selection.setdefault(key, []).extend(values.split(","))
    return selection


def names(text: str, value: object) -> bool:
    """Whether command-line ``text`` names ``value``: numbers as numbers,
    booleans case-insensitively, anything else by its text."""
    if isinstance(value, (bool, np.bool_)):
        return text.lower() == str(value).lower()
    if isinstance(value, Real):
        try:
            return float(text) == value
        except ValueError:
            return False
    return text == str(value)


def _matches(column: pd.Series, key: str, wanted: list[str]) -> pd.Series:
    present = sorted(column.dropna().unique(), key=str)
    for text in wanted:
        if not any(names(text, value) for value in present):
            raise ConfigError(key, text, ", ".join(str(v) for v in present))
    return column.map(lambda value: any(names(text, value) for text in wanted)).astype(bool)


def select(results: Results, selection: dict[str, list[str]]) -> Results:
    """The runs matching every key of ``selection``; ConfigError on a key that
    no run has, or a value that no run has."""
    runs = results.runs
    keep = pd.Series(True, index=runs.index)
    for key, wanted in selection.items():
        if key not in runs:
            raise ConfigError(key, ",".join(wanted), f"{', '.join(KEYS_SHOWN)}, config.<key> "
                              "(e.g. config.moe.capacity_factor), or a metric (e.g. drop_rate)")
        keep &= _matches(runs[key], key, wanted)
    if not keep.any():
        raise ConfigError("selection", " ".join(f"{k}={','.join(v)}" for k, v in selection.items()),
                          "a combination that matches at least one run")
    return results.where(keep)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moebench-report", description=__doc__.split("\n\n")[0],
                                     epilog=f"selection: KEY=VALUE[,VALUE...] pairs, {EXAMPLE}")
    parser.add_argument("selection", nargs="*", help="KEY=VALUE[,VALUE...]; none: every run")
    parser.add_argument("--out", required=True, help="output folder, e.g. reports/top1-vs-top2")
    parser.add_argument("--results", default="results", help="folder of run records; default: results")
    own_report = parser.add_mutually_exclusive_group()
    own_report.add_argument("--experts", action="store_true", help="write the expert-count report "
                            "(experts.md, .csv, .svg: quality against the number of experts) instead")
    own_report.add_argument("--transfer", action="store_true", help="write the fine-tuning gap report "
                            "(transfer.md, .csv: per router, quality after fine-tuning and in "
                            "pretraining, and the paired gap to dense (active)) instead")
    args = parser.parse_args(argv)
    check_results_dir(args.results)
    try:
        selected = select(load(args.results), parse_selection(args.selection))
        report = next((name for name in OWN_REPORTS if getattr(args, name)), None)
        files = OWN_REPORTS[report](selected.runs) if report else None
    except ConfigError as e:
        fail(str(e))
    if files is not None:
        written = write_files(Path(args.out), files, owned=f"{report}.*")
    else:
        title = f"moebench report: {' '.join(args.selection) or 'all runs'}"
        written = write_reports(selected, Path(args.out), title)
    print(f"wrote {len(written)} files to {args.out}/")


if __name__ == "__main__":
    main()
