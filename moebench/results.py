"""Run records -> validated, tidy pandas frames: the one loader behind the
leaderboard, the comparison reports and the regression check.

Every ``*.json`` under the results folder is read (sorted, so the frames do
not depend on the file system's order), except the folders in
:data:`NOT_RECORDS`. A file that is not a valid record of
:data:`~moebench.record.SCHEMA_VERSION` is skipped and reported by path,
never a crash.

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
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from numbers import Real
from pathlib import Path

import pandas as pd

from moebench.record import SCHEMA_VERSION

NOT_RECORDS = ("bench", "baselines")  # subfolders of results/ that hold other JSON
STATUSES = ("completed", "diverged", "interrupted")
# Config keys that do not change what a run measures: not part of a setup.
# Thread count only reorders float sums (and sets the speed, as the machine does);
# allow_leaky only permits a run that would otherwise be refused.
IGNORED_KEYS = ("seed", "results_dir", "data.root", "data.cache_dir", "trainer.log_every_s",
                "trainer.num_threads", "router.allow_leaky")
# Router options that name a variant of the router itself, shown in its name:
# the dense baseline at the active or the total parameter count of the MoE.
VARIANT_KEYS = {"dense": "params"}
ID_COLUMNS = ["run_id", "task", "setup", "seed"]

_TOP_LEVEL = {"schema_version": int, "run_id": str, "status": str, "router": str, "task": str,
              "seed": int, "config": dict, "env": dict, "metrics": dict, "curves": list}
_METRICS = {"quality_metric": str, "higher_is_better": bool, "quality": Real}


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
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason) of files that are not records

    def where(self, keep: pd.Series) -> Results:
        """The runs where ``keep`` (a boolean Series over ``runs``) holds."""
        runs = self.runs[keep.to_numpy()]
        ids = set(runs["run_id"])
        pick = {name: frame[frame["run_id"].isin(ids)].reset_index(drop=True)
                for name, frame in [("curves", self.curves), ("loads", self.loads),
                                    ("positions", self.positions), ("clusters", self.clusters)]}
        return replace(self, runs=runs.reset_index(drop=True), **pick)


def validate(record: object) -> dict:
    """``record`` if it is a run record this moebench reads, else RecordError."""
    if not isinstance(record, dict):
        raise RecordError("not a JSON object")
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordError(f"unknown schema version {version!r} (this moebench reads {SCHEMA_VERSION})")
    _check_fields(record, _TOP_LEVEL, "")
    _check_fields(record["metrics"], _METRICS, "metrics.")
    if record["status"] not in STATUSES:
        raise RecordError(f"status {record['status']!r} is not one of {', '.join(STATUSES)}")
    if not all(isinstance(p, dict) and isinstance(p.get("step"), int) for p in record["curves"]):
        raise RecordError("curves must be a list of objects with an integer step")
    metrics = record["metrics"]
    per_layer = metrics.get("per_layer", [])
    if not (isinstance(per_layer, list) and all(isinstance(layer, dict) for layer in per_layer)):
        raise RecordError("metrics.per_layer must be a list of objects")
    # The per-expert, per-position and per-cluster details the figures read.
    _check_numbers(metrics.get("drop_rate_by_position", []), 1, "metrics.drop_rate_by_position")
    for i, layer in enumerate(per_layer):
        _check_numbers(layer.get("load_E", []), 1, f"metrics.per_layer[{i}].load_E")
        _check_numbers(layer.get("cluster_expert", []), 2, f"metrics.per_layer[{i}].cluster_expert")
    return record


def _check_fields(obj: dict, fields: dict[str, type], prefix: str) -> None:
    for key, kind in fields.items():
        value = obj.get(key)
        # bool is an int to Python, but a seed of true is not a seed
        if not isinstance(value, kind) or (kind in (int, Real) and isinstance(value, bool)):
            raise RecordError(f"{prefix}{key} is {value!r}, expected {kind.__name__}")


def _check_numbers(value: object, depth: int, name: str) -> None:
    """A list of numbers (depth 1) or a list of lists of numbers (depth 2)."""
    def ok(v: object, d: int) -> bool:
        if d == 0:
            return isinstance(v, Real) and not isinstance(v, bool)
        return isinstance(v, list) and all(ok(item, d - 1) for item in v)

    if not ok(value, depth):
        raise RecordError(f"{name} must be a list{' of lists' * (depth - 1)} of numbers")


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
            record = validate(json.loads(path.read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecordError) as e:
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


def variant(record: dict) -> str:
    """The router's display name: ``top1``, ``dense (active)``."""
    key = VARIANT_KEYS.get(record["router"])
    if key is None:
        return record["router"]
    return f"{record['router']} ({record['config'].get('router', {}).get(key)})"


def setup_names(records: list[dict]) -> list[str]:
    """Each record's setup name: its variant plus the config keys in which the
    setups of its task differ (router options compared within one router) and
    its value is not the task's most common one. Distinct configs get distinct
    names: where two differ, at least one of them departs from the common value."""
    configs = [{k: v for k, v in flatten(r["config"]).items() if k not in IGNORED_KEYS}
               for r in records]
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
        shown = f"router.{VARIANT_KEYS.get(r['router'])}"  # already in the variant's name
        keys = sorted((differing[r["task"], None] | differing[r["task"], r["router"]]) - {shown})
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


def load_results(root: str | Path) -> Results:
    """Every valid record under ``root`` as tidy frames."""
    found, skipped = read_records(root)
    records = [record for _, record in found]
    setups = setup_names(records)
    runs, curves, loads, positions, clusters = [], [], [], [], []
    for (path, r), setup in zip(found, setups):
        ids = {"run_id": r["run_id"], "task": r["task"], "setup": setup, "seed": r["seed"]}
        m = r["metrics"]
        runs.append({**ids, "router": r["router"], "variant": variant(r), "status": r["status"],
                     "path": path, "quality_metric": m["quality_metric"],
                     "higher_is_better": m["higher_is_better"], **_scalars(m),
                     **{f"config.{k}": v for k, v in flatten(r["config"]).items()
                        if not isinstance(v, (list, dict))}})
        curves += [{**ids, **_scalars(point), "step": point["step"]} for point in r["curves"]]
        positions += [{**ids, "position": p, "drop_rate": float(v)}
                      for p, v in enumerate(m.get("drop_rate_by_position", []))]
        for layer, stats in enumerate(m.get("per_layer", [])):
            loads += [{**ids, "layer": layer, "expert": e, "load": float(v)}
                      for e, v in enumerate(stats.get("load_E", []))]
            clusters += [{**ids, "layer": layer, "cluster": c, "expert": e, "count": float(v)}
                         for c, row in enumerate(stats.get("cluster_expert", []))
                         for e, v in enumerate(row)]
    return Results(
        runs=_frame(runs, [], ("router", "variant", "status", "path", "quality_metric",
                               "higher_is_better", "quality")),
        curves=_frame(curves, ["step"]),
        loads=_frame(loads, ["layer", "expert"], ("load",)),
        positions=_frame(positions, ["position"], ("drop_rate",)),
        clusters=_frame(clusters, ["layer", "cluster", "expert"], ("count",)),
        skipped=tuple(skipped),
    )


def _frame(rows: list[dict], keys: list[str], values: tuple[str, ...] = ()) -> pd.DataFrame:
    """A long frame sorted by run and ``keys``, with its columns even when empty."""
    frame = pd.DataFrame(rows, columns=None if rows else [*ID_COLUMNS, *keys, *values])
    return frame.sort_values(["task", "setup", "seed", "run_id", *keys]).reset_index(drop=True)

