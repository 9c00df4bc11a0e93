"""Run records: one self-describing JSON file per run, written atomically.

The fields are documented in the README ("Results schema"). A record is
written to a temporary file and then hard-linked to its final name, which
fails rather than overwrite an existing record.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf

from moebench.origin import hardware, moebench_version, source_commit

# 2: provenance (started_at, ended_at, wall_time_s, command, data_files,
# env.moebench, env.hardware), and git_sha only from moebench's own source tree.
SCHEMA_VERSION = 2
REPO_ROOT = Path(__file__).resolve().parent.parent
# Config keys that do not change what a run measures: where its files are,
# how often and how much it logs, where it is tracked, its thread count (which
# only reorders float sums), and allow_leaky (which only permits a run that
# would otherwise be refused). A key names a value or a whole section
# ("logger"). Left out of the config hash, and out of a setup's identity (results.py).
RESULT_NEUTRAL_KEYS = ("results_dir", "data.root", "data.cache_dir", "trainer.log_every_s",
                       "trainer.quiet", "trainer.num_threads", "router.allow_leaky", "logger")
# Keys added after records were made: at these defaults a config keeps the
# identity it had before them, so completed runs are still found.
KEYS_ADDED_LATER = {"moe.expert_parallel": 1, "moe.comm_ranks": 8, "router.freeze": False,
                    "moe.experts": "standard", "moe.lora_rank": 4, "moe.expert_widths": None,
                    "transfer.pretrain_train_flops": None}


def environment(device: str) -> dict:
    """The software and machine a run ran on, and moebench's commit where it
    runs from its own source tree (moebench/origin.py)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    git_sha, git_dirty = source_commit(REPO_ROOT)
    return {
        "git_sha": git_sha,
        "git_dirty": git_dirty,
        "moebench": moebench_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "device_type": device,
        "cpu_threads": torch.get_num_threads(),
        "hardware": hardware(),
    }


def resolved_config(cfg: object) -> dict:
    """A RunConfig as the plain, resolved dict that a record holds and
    :func:`config_hash` digests."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def config_hash(config: dict) -> str:
    """A short, stable digest of a resolved config: the identity of a run.

    Only keys that change the result count, so a rerun on another machine
    (another data folder, cache or thread count) finds the runs already done.
    """
    identity = copy.deepcopy(config)
    for key in RESULT_NEUTRAL_KEYS:
        _parent(identity, key).pop(key.rsplit(".", 1)[-1], None)
    for key, default in KEYS_ADDED_LATER.items():
        parent, leaf = _parent(identity, key), key.rsplit(".", 1)[-1]
        if parent.get(leaf) == default:
            parent.pop(leaf, None)  # absent from an older config: a default of None matches it
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _parent(config: dict, key: str) -> dict:
    """The node holding dotted ``key`` (empty when there is none)."""
    node = config
    for parent in key.split(".")[:-1]:
        node = node.get(parent) or {}
    return node


def new_run_id(router: str, task: str, seed: int, digest: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{task}-{router}-s{seed}-{digest}-{stamp}-{uuid.uuid4().hex[:6]}"


def find_completed(results_dir: str | Path, digest: str) -> Path | None:
    """A completed record of the run with this config hash, if one exists."""
    for path in sorted(Path(results_dir).glob(f"*-{digest}-*.json")):
        try:
            if json.loads(path.read_text()).get("status") == "completed":
                return path
        except (OSError, json.JSONDecodeError):
            continue  # a damaged record does not count as done
    return None


def finite_or_none(value: object) -> object:
    """``value`` with every NaN or infinite float (a diverged run's loss) as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_record(record: dict, results_dir: str | Path) -> Path:
    """Write ``record`` as ``<results_dir>/<run_id>.json``; never overwrite.

    Strict JSON: NaN and infinities are written as null. The file's mode
    follows the umask, as any file the user creates.
    """
    directory = Path(results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{record['run_id']}.json"
    tmp = directory / f".tmp-{uuid.uuid4().hex}.json"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(finite_or_none(record), f, indent=1, sort_keys=True, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, final)  # raises FileExistsError instead of overwriting
    finally:
        os.unlink(tmp)
    return final
