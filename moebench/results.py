"""Run records -> validated, tidy pandas frames: the one loader behind the
leaderboard, the comparison reports and the regression check.

Every ``*.json`` under the results folder is read (sorted, so the frames do
not depend on the file system's order), except the folders in
:data:`NOT_RECORDS`. A file that is not a valid record is skipped and
reported by path with the reason, never a crash or a hang: not a regular
file (a FIFO would block), not JSON, nested deeper than :data:`MAX_DEPTH`, a
schema version this moebench does not read, not a
:class:`~moebench.record_schema.ReportedRecord` (e.g. a ``task`` or
``router`` that is not a name: the task names figure files), a completed
run whose quality is not a finite number (it would be ranked), or a quality
metric other than the one of its task's other records (a mean or a rank
over two metrics means nothing). Records of an older schema version are
migrated to the current one as they are read
(:func:`~moebench.record_schema.migrate`).

Missing numbers: older records hold bare ``NaN`` and ``Infinity``, newer
ones ``null``; both read as missing (NaN in the frames). A diverged or
interrupted run's quality may be missing: it is counted under its task,
never ranked.

Runs are grouped into *setups*: runs of one task whose resolved configs
agree except for the seed (and keys that do not change results, as the
output folder). A setup is named by its router, plus every config key in
which setups of the task differ and it departs from the task's most common
value, e.g. ``top1`` beside ``top1 (moe.capacity_factor=2.0)``: names stay
short where a sweep adds a few variants, and seeds of different settings
never pool into one mean.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from numbers import Real
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from moebench.record import RESULT_NEUTRAL_KEYS
from moebench.record_schema import READABLE_VERSIONS, ReportedRecord, error_reason, migrate

# Subfolders of results/ that hold other JSON, or other experiments' records
# (the smoke-test tier, the expert-count and transfer experiments), each read on its own.
NOT_RECORDS = ("bench", "baselines", "quick", "experts", "transfer")
# Config keys that do not change what a run measures (record.RESULT_NEUTRAL_KEYS
# says why), each a value or a whole section: not part of a setup; the seed
# tells the runs of a setup apart.
IGNORED_KEYS = ("seed", *RESULT_NEUTRAL_KEYS)
# Router options that name a variant of the router itself, shown in its name:
# the dense baseline at the active or the total parameter count of the MoE;
# and any router with its gate frozen at initialization (router.freeze).
VARIANT_KEYS = {"dense": "params"}
FROZEN_KEY = "router.freeze"
ID_COLUMNS = ["run_id", "task", "setup", "seed"]
# Provenance in the runs frame (moebench/reporting/provenance.py states it).
COMMIT_COLUMNS = ("env.git_sha", "env.git_dirty")
# Records nest 6 deep; far deeper ones would exhaust Python's stack when read.
MAX_DEPTH = 32


class RecordError(ValueError):
    """A file that is not a valid run record; the message says why."""


@dataclass(frozen=True)
class Results:
    """Tidy frames of a set of runs; the long frames hold :data:`ID_COLUMNS`."""

    runs: pd.DataFrame  # one row per run: ids, status, scalar metrics, config.* columns
    curves: pd.DataFrame  # one row per (run, curve point)
    loads: pd.DataFrame  # (run, layer, expert, load): metrics.per_layer[i].load_E
    positions: pd.DataFrame  # (run, position, drop_rate): metrics.drop_rate_by_position
    clusters: pd.DataFrame  # (run, layer, cluster, expert, count): per_layer[i].cluster_expert
    # (run, last_step, first_step, steps, train_tokens, train_loss): train_loss_curve,
    # empty for records from before it was recorded
    train_losses: pd.DataFrame
    # (run, layer, expert, rank, token, count, lift): per_layer[i].expert_tokens,
    # rank 0 the highest lift; empty for records from before it was recorded
    expert_tokens: pd.DataFrame
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason) of the files left out

    def where(self, keep: pd.Series) -> Results:
        """The runs where ``keep`` (a boolean Series over ``runs``) holds."""
        runs = self.runs[keep.to_numpy()]
        ids = set(runs["run_id"])
        pick = {name: frame[frame["run_id"].isin(ids)].reset_index(drop=True)
                for name, frame in [("curves", self.curves), ("loads", self.loads),
                                    ("positions", self.positions), ("clusters", self.clusters),
                                    ("train_losses", self.train_losses),
                                    ("expert_tokens", self.expert_tokens)]}
        return replace(self, runs=runs.reset_index(drop=True), **pick)


def validate(record: object) -> dict:
    """``record``, in the current schema version's shape, if it is a run record
    this moebench reads, else RecordError."""
    if not isinstance(record, dict):
        raise RecordError("not a JSON object")
    version = record.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise RecordError(f"unknown schema version {version!r} (this moebench reads "
                          f"{', '.join(map(str, READABLE_VERSIONS))})")
    if _depth(record) > MAX_DEPTH:
        raise RecordError(f"nested deeper than {MAX_DEPTH} levels")
    try:
        ReportedRecord.model_validate(record)
    except ValidationError as e:
        raise RecordError(error_reason(e.errors()[0])) from None
    quality = record["metrics"].get("quality")
    if record["status"] == "completed" and (quality is None or not math.isfinite(quality)):
        raise RecordError(f"metrics.quality is {'missing' if quality is None else quality}, "
                          "expected a finite number in a completed run")
    return migrate(record)


def _depth(value: object) -> int:
    """How deep lists and objects nest in ``value``; without recursion, which
    a deep value would exhaust."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack += [(v, depth + 1) for v in (value.values() if isinstance(value, dict) else value)]
    return deepest


def _number(value: Real | None) -> float:
    return math.nan if value is None else float(value)


def read_record(path: Path) -> dict:
    """The validated record in ``path``; RecordError, OSError or another
    ValueError (not JSON) says why not."""
    if not path.is_file():  # a FIFO would block the read, a device never end it
        raise RecordError("not a regular file")
    try:
        record = json.loads(path.read_text())
    except RecursionError:
        raise RecordError("nested too deeply to parse") from None
    return validate(record)


def read_records(root: str | Path) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    """Valid records under ``root`` as (path relative to root, record), and the
    skipped files as (path, reason); both sorted by path."""
    root = Path(root)
    records, skipped, seen = [], [], {}
    for path in sorted(root.rglob("*.json")):
        rel = path.relative_to(root).as_posix()
        if rel.split("/")[0] in NOT_RECORDS or path.name.startswith(".tmp-"):
            continue
        try:
            record = read_record(path)
        except (OSError, ValueError) as e:  # ValueError: RecordError, bad JSON or text
            skipped.append((rel, str(e).splitlines()[0]))
            continue
        if record["run_id"] in seen:  # a copied file would count a seed twice
            skipped.append((rel, f"duplicate run_id {record['run_id']} (also in {seen[record['run_id']]})"))
            continue
        seen[record["run_id"]] = rel
        records.append((rel, record))
    return records, skipped


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"moe": {"k": 1}}`` -> ``{"moe.k": 1}``; lists are leaves."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def setup_config(record: dict) -> dict[str, object]:
    """The record's flattened config without :data:`IGNORED_KEYS`: a key, or
    every key of an ignored section (``logger.*``)."""
    return {key: value for key, value in flatten(record["config"]).items()
            if not any(key == ignored or key.startswith(f"{ignored}.") for ignored in IGNORED_KEYS)}


def variant(record: dict) -> str:
    """The router's display name: ``top1``, ``top1 (frozen)``, ``dense (active)``."""
    router_cfg = record["config"].get("router", {})
    key = VARIANT_KEYS.get(record["router"])
    name = record["router"] if key is None else f"{record['router']} ({router_cfg.get(key)})"
    return f"{name} (frozen)" if router_cfg.get("freeze") else name


def setup_names(records: list[dict]) -> list[str]:
    """Each record's setup name: its variant plus the config keys in which the
    setups of its task differ (router options compared within one router) and
    its value is not the task's most common one. Distinct configs get distinct
    names: where two differ, at least one of them departs from the common value."""
    configs = [setup_config(r) for r in records]
    groups: dict[tuple[str, str | None], list[dict]] = defaultdict(list)
    for r, config in zip(records, configs):
        groups[r["task"], None].append(config)
        groups[r["task"], r["router"]].append(config)
    counts = {group: _value_counts(members) for group, members in groups.items()}
    differing = {group: {key for key, seen in counted.items()
                         if len(seen) > 1 and key.startswith("router.") == (group[1] is not None)}
                 for group, counted in counts.items()}
    common = {task: _most_common(counted) for (task, router), counted in counts.items()
              if router is None}
    names = []
    for r, config in zip(records, configs):
        shown = {f"router.{VARIANT_KEYS.get(r['router'])}", FROZEN_KEY}  # already in the variant's name
        keys = sorted((differing[r["task"], None] | differing[r["task"], r["router"]]) - shown)
        detail = ", ".join(f"{key}={config[key]}" for key in keys
                           if key in config and _text(config[key]) != common[r["task"]][key])
        names.append(f"{variant(r)} ({detail})" if detail else variant(r))
    return names


def _text(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def _value_counts(configs: list[dict]) -> dict[str, Counter]:
    """Per key, how many configs have each value; a key missing from older
    records (added to the schema since) differs from nothing."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for config in configs:
        for key, value in config.items():
            counts[key][_text(value)] += 1
    return counts


def _most_common(counts: dict[str, Counter]) -> dict[str, str | None]:
    """Per key, the value more configs have than any other (None on a tie:
    then every setup shows the key)."""
    common: dict[str, str | None] = {}
    for key, seen in counts.items():
        (first, n1), *rest = seen.most_common(2)
        common[key] = first if not rest or rest[0][1] < n1 else None
    return common


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, Real) and not isinstance(v, bool)}


def _metric(record: dict) -> str:
    """``'bpc' (lower is better)``: a quality metric is its name and direction."""
    metrics = record["metrics"]
    direction = "higher" if metrics["higher_is_better"] else "lower"
    return f"{metrics['quality_metric']!r} ({direction} is better)"


def _one_metric_per_task(found: list[tuple[str, dict]]) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    """The (path, record) pairs whose quality metric is the most common of
    their task (the first by name on a tie), and the other paths with the
    reason they are skipped: a mean or a rank over two metrics means nothing."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for _, r in found:
        counts[r["task"]][_metric(r)] += 1
    chosen = {task: min(seen, key=lambda metric: (-seen[metric], metric)) for task, seen in counts.items()}
    kept, skipped = [], []
    for path, r in found:
        task = r["task"]
        if _metric(r) == chosen[task]:
            kept.append((path, r))
        else:
            skipped.append((path, f"quality metric {_metric(r)}, where {counts[task][chosen[task]]} "
                                  f"other {task} record(s) have {chosen[task]}"))
    return kept, skipped


def _one_completed_run_per_seed(found: list[tuple[str, dict]]) -> tuple[list[tuple[str, dict]],
                                                                        list[tuple[str, str]]]:
    """The (path, record) pairs but a second completed record of one run (same
    task, config and seed, e.g. rerun under another resume key), and those
    paths with the reason they are skipped: one run must not count as two seeds."""
    first: dict[str, str] = {}
    kept, skipped = [], []
    for path, r in found:
        identity = _text([r["task"], r["seed"], setup_config(r)])
        if r["status"] != "completed":
            kept.append((path, r))
        elif identity in first:
            skipped.append((path, f"the same run (task, config and seed) as {first[identity]}, "
                                  "completed twice"))
        else:
            first[identity] = path
            kept.append((path, r))
    return kept, skipped


def _commit(env: dict) -> dict[str, object]:
    """``env.git_sha`` and ``env.git_dirty``: the commit of moebench's source
    that wrote the record and whether it had uncommitted changes; None where
    the record holds none (or not a string, a bool)."""
    sha, dirty = env.get("git_sha"), env.get("git_dirty")
    return {"env.git_sha": sha if isinstance(sha, str) else None,
            "env.git_dirty": dirty if isinstance(dirty, bool) else None}


def _budget_spent(record: dict) -> float:
    """The training FLOPs a run spent (its last evaluation's ``train_flops``)
    over its ``trainer.max_train_flops``; NaN without a budget in FLOPs."""
    budget = record["config"].get("trainer", {}).get("max_train_flops")
    spent = record["curves"][-1].get("train_flops") if record["curves"] else None
    return spent / budget if budget and spent is not None else math.nan


def _quality(metrics: dict) -> float:
    """The quality, NaN where missing (a diverged or interrupted run's)."""
    quality = metrics.get("quality")
    return float(quality) if quality is not None and math.isfinite(quality) else math.nan


def load_results(root: str | Path) -> Results:
    """Every valid record under ``root`` as tidy frames."""
    found, skipped = read_records(root)
    found, mixed = _one_metric_per_task(found)
    found, repeated = _one_completed_run_per_seed(found)
    skipped = sorted(skipped + mixed + repeated)
    records = [record for _, record in found]
    setups = setup_names(records)
    runs, curves, loads, positions, clusters, losses, tokens = [], [], [], [], [], [], []
    for (path, r), setup in zip(found, setups):
        ids = {"run_id": r["run_id"], "task": r["task"], "setup": setup, "seed": r["seed"]}
        m = r["metrics"]
        runs.append({**ids, "router": r["router"], "variant": variant(r), "status": r["status"],
                     "path": path, **_commit(r["env"]), "quality_metric": m["quality_metric"],
                     "higher_is_better": m["higher_is_better"], **_scalars(m), "quality": _quality(m),
                     "budget_spent": _budget_spent(r),
                     **{f"config.{k}": v for k, v in flatten(r["config"]).items()
                        if not isinstance(v, (list, dict))}})
        curves += [{**ids, **_scalars(point), "step": point["step"]} for point in r["curves"]]
        losses += [{**ids, **_scalars(point), "last_step": point["last_step"]}
                   for point in r.get("train_loss_curve", [])]
        positions += [{**ids, "position": p, "drop_rate": _number(v)}
                      for p, v in enumerate(m.get("drop_rate_by_position", []))]
        for layer, stats in enumerate(m.get("per_layer", [])):
            loads += [{**ids, "layer": layer, "expert": e, "load": _number(v)}
                      for e, v in enumerate(stats.get("load_E", []))]
            clusters += [{**ids, "layer": layer, "cluster": c, "expert": e, "count": _number(v)}
                         for c, row in enumerate(stats.get("cluster_expert", []))
                         for e, v in enumerate(row)]
            tokens += [{**ids, "layer": layer, "expert": e, "rank": i, "token": token, "count": count,
                        "lift": lift}
                       for e, tops in enumerate(stats.get("expert_tokens", []))
                       for i, (token, count, lift) in enumerate(tops)]
    return Results(
        runs=_frame(runs, [], ("router", "variant", "status", "path", *COMMIT_COLUMNS, "quality_metric",
                               "higher_is_better", "quality")),
        curves=_frame(curves, ["step"]),
        loads=_frame(loads, ["layer", "expert"], ("load",)),
        positions=_frame(positions, ["position"], ("drop_rate",)),
        clusters=_frame(clusters, ["layer", "cluster", "expert"], ("count",)),
        train_losses=_frame(losses, ["last_step"], ("first_step", "steps", "train_tokens", "train_loss")),
        expert_tokens=_frame(tokens, ["layer", "expert", "rank"], ("token", "count", "lift")),
        skipped=tuple(skipped),
    )


def _frame(rows: list[dict], keys: list[str], values: tuple[str, ...] = ()) -> pd.DataFrame:
    """A long frame sorted by run and ``keys``, with its columns even when empty."""
    frame = pd.DataFrame(rows, columns=None if rows else [*ID_COLUMNS, *keys, *values])
    return frame.sort_values(["task", "setup", "seed", "run_id", *keys]).reset_index(drop=True)

