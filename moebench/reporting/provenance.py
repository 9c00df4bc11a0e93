"""Where the records came from: the git commits of the code that wrote them.

Every record's ``env`` holds ``git_sha`` (moebench's own commit, null
unless it ran from its own repository: :func:`moebench.origin.source_commit`) and ``git_dirty`` (whether tracked files had
uncommitted changes; :func:`moebench.record.environment`), which the runs
frame of :mod:`moebench.results` holds in its columns ``env.git_sha`` and
``env.git_dirty``; :func:`provenance_line` states the commits with their
record counts and how many records were dirty.
"""

from __future__ import annotations

import pandas as pd

from moebench.results import COMMIT_COLUMNS

SHA_COLUMN, DIRTY_COLUMN = COMMIT_COLUMNS
SHORT_SHA = 7  # characters of a commit shown, as git's short form


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
    dirty = int(runs[DIRTY_COLUMN].eq(True).sum())  # None (not saying) is not True
    unknown = int(runs[DIRTY_COLUMN].isna().sum())
    line = f"Records: {len(runs)} ({', '.join(parts)}); {dirty} with uncommitted changes (git_dirty)"
    return line + (f", {unknown} with git_dirty unknown." if unknown else ".")
