"""Where the records came from: the git commits of the code that wrote them.

Every record's ``env`` holds ``git_sha`` (moebench's own commit, null
unless it ran from its own repository: :func:`moebench.origin.source_commit`) and ``git_dirty`` (whether tracked files had
uncommitted changes; :func:`moebench.record.environment`). The runs frame of
:mod:`moebench.results` leaves ``env`` out, so :func:`with_commits` reads the
two fields back from the loaded records' files into the columns
:data:`SHA_COLUMN` and :data:`DIRTY_COLUMN`; :func:`provenance_line` states
the commits with their record counts and how many records were dirty.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd

from moebench.results import Results

SHA_COLUMN, DIRTY_COLUMN = "env.git_sha", "env.git_dirty"
SHORT_SHA = 7  # characters of a commit shown, as git's short form


def with_commits(results: Results, root: str | Path) -> Results:
    """``results`` (loaded from ``root``) with each run's ``env.git_sha`` and
    ``env.git_dirty``, None where the record holds none (or not a string, a bool)."""
    envs = [json.loads((Path(root) / path).read_text()).get("env", {}) for path in results.runs["path"]]
    shas = [env.get("git_sha") if isinstance(env.get("git_sha"), str) else None for env in envs]
    dirty = [env.get("git_dirty") if isinstance(env.get("git_dirty"), bool) else None for env in envs]
    runs = results.runs.assign(**{SHA_COLUMN: pd.Series(shas, index=results.runs.index, dtype=object),
                                  DIRTY_COLUMN: pd.Series(dirty, index=results.runs.index, dtype=object)})
    return replace(results, runs=runs)


def provenance_line(runs: pd.DataFrame) -> str:
    """``Records: 270 (commit 1a2b3c4: 268, commit 5d6e7f8: 2); 3 with
    uncommitted changes (git_dirty).``: every commit, most records first,
    then the records without one; the dirty ones, and those not saying."""
    shas = runs[SHA_COLUMN].map(lambda sha: None if pd.isna(sha) else sha[:SHORT_SHA]).dropna()
    counts = shas.value_counts()
    ordered = sorted(counts.index, key=lambda sha: (-counts[sha], sha))
    parts = [f"commit {sha}: {counts[sha]}" for sha in ordered]
    if len(shas) < len(runs):
        parts.append(f"no commit recorded: {len(runs) - len(shas)}")
    dirty = int(runs[DIRTY_COLUMN].map(lambda value: value is True).sum())
    unknown = int(runs[DIRTY_COLUMN].isna().sum())
    line = f"Records: {len(runs)} ({', '.join(parts)}); {dirty} with uncommitted changes (git_dirty)"
    return line + (f", {unknown} with git_dirty unknown." if unknown else ".")
