"""``moebench-leaderboard``: every run record under ``--results`` -> ``--out``
(the leaderboard, :mod:`moebench.reporting.leaderboard`), and the Hydra
callback that regenerates it when a sweep ends."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from moebench.commands.options import fail
from moebench.config import DataConfig
from moebench.errors import ConfigError
from moebench.reporting.leaderboard import TITLE, build
from moebench.tasks.data import default_data

log = logging.getLogger(__name__)


def check_results_dir(path: str) -> None:
    if not Path(path).is_dir():
        fail(str(ConfigError("--results", path, "an existing folder of run records")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moebench-leaderboard",
                                     description="The leaderboard: every run record under --results -> --out.")
    parser.add_argument("--results", default="results", help="folder of run records, read recursively "
                        "(results/bench and results/baselines are not records, and results/quick and "
                        "results/experts are read on their own); default: results")
    parser.add_argument("--title", default=TITLE, help=f"the page's title; default: {TITLE!r}")
    parser.add_argument("--out", default="reports", help="output folder; default: reports")
    parser.add_argument("--data", default=None, help="folder of the data sets, for the count-model "
                        "references; default: $MOEBENCH_DATA")
    args = parser.parse_args(argv)
    check_results_dir(args.results)
    data = default_data() if args.data is None else dataclasses.replace(default_data(), root=args.data)
    try:
        written = build(args.results, args.out, data, args.title)
    except ConfigError as e:
        fail(f"{e} ({args.out}/ left as it is)")
    print(f"wrote {len(written)} files to {args.out}/")


class LeaderboardCallback(Callback):
    """Regenerates the leaderboard when a Hydra sweep ends. In conf/config.yaml:

        hydra:
          callbacks:
            leaderboard:
              _target_: moebench.commands.leaderboard.LeaderboardCallback
              results: results
              out: reports

    Relative paths are taken from the directory the sweep was started in;
    the count models read the sweep's data sets (``data.root``, ``data.cache_dir``).
    """

    def __init__(self, results: str = "results", out: str = "reports", title: str = TITLE) -> None:
        self.results, self.out, self.title = results, out, title

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        cwd = Path(config.hydra.runtime.cwd)
        root, cache = (OmegaConf.select(config, f"data.{key}", default=None)
                       for key in ("root", "cache_dir"))
        data = DataConfig(root=None if root is None else str(cwd / root),
                          cache_dir=None if cache is None else str(cwd / cache))
        written = build(cwd / self.results, cwd / self.out, data, self.title)
        log.info("leaderboard: wrote %d files to %s", len(written), cwd / self.out)


if __name__ == "__main__":
    main()
