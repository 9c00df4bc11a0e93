"""Writing a report folder so that a failure cannot damage the one there.

Every file is first written into a staging folder inside the output folder;
only when all are written are they moved into place, by renames, which need
no free space and replace each file whole. A full disk or a crash while
writing leaves the old report as it was (and a ``.staging-*`` folder after a
kill). No fsync: a report is regenerated from the records at will.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_files(out: Path, files: dict[str, bytes], owned: str) -> list[Path]:
    """Write ``files`` (path relative to ``out`` -> content) into ``out``, then
    remove the files matching the glob ``owned`` that are not among them (a
    figure of a task no longer in the results). Returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        for name, content in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(content)
        for name in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging)
    for stale in out.glob(owned):
        if stale.relative_to(out).as_posix() not in files:
            stale.unlink()
    return [out / name for name in files]
