"""Command line: ``python -m moebench [overrides]`` and ``-m`` sweeps (a Hydra app).

Before Hydra starts, every override (and every combination of a sweep, an
experiment's ``hydra.sweeper.params`` included) is composed and validated
once, so bad input fails at start-up with one line naming the key, the bad
value and the allowed values, and exit code 2, instead of a traceback or a
sweep that breaks on its tenth job.
"""

from __future__ import annotations

import functools
import itertools
import pickle
import sys
import time
from collections.abc import Mapping, Sequence

import hydra
from hydra import compose
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.config_loader import ConfigLoader
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moebench.commands.options import fail
from moebench.compose import CONF_MODULE, explain, hydra_context, register_all
from moebench.errors import ConfigError, DataError
from moebench.validation import validate

# Hydra flags that change which config is loaded: then Hydra checks alone.
_CONFIG_FLAGS = {"-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir"}
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun",
                     *_CONFIG_FLAGS}
# Flags that make Hydra answer without running: nothing to check (a shell
# completion query must answer fast, whatever the command line holds so far).
_ANSWERING_FLAGS = {"--help", "-h", "--hydra-help", "--shell-completion", "-sc"}
# Launchers that run the jobs on this machine, whose devices can be checked.
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")
PROGRESS_EVERY_S = 2.0


def user_overrides(argv: list[str]) -> list[str] | None:
    """The key=value arguments of ``argv``; None when Hydra must check alone."""
    overrides, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in _CONFIG_FLAGS or arg in _ANSWERING_FLAGS:
            return None
        elif arg in _FLAGS_WITH_VALUE:
            skip_next = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def is_multirun(argv: list[str]) -> bool:
    return "-m" in argv or "--multirun" in argv


def parse_checked(arguments: list[str], loader: ConfigLoader) -> list[Override]:
    """``arguments`` parsed, every config group choice checked against the
    group's options (a glob resolved against them), Hydra's own settings
    (launcher, sweep dir) left out: they are Hydra's to check."""
    parsed = [o for o in OverridesParser.create(config_loader=loader).parse_overrides(arguments)
              if not o.is_hydra_override()]
    for override in parsed:
        group = override.key_or_group
        if override.is_delete() or not loader.repository.group_exists(group):
            continue
        allowed = loader.get_group_options(group, results_filter=ObjectType.CONFIG)
        values = sweep_values(override) if override.is_sweep_override() else [override.value()]
        if values is None:
            continue  # an interval: no group has one
        if not values:  # a glob that matches no option
            raise ConfigError(group, override.input_line.split("=", 1)[1], allowed)
        for value in values:
            if isinstance(value, str) and value not in allowed:
                raise ConfigError(group, value, allowed)
    return parsed


def sweep_overrides(params: Mapping[str, object], overrides: Sequence[str],
                    loader: ConfigLoader) -> list[Override]:
    """An experiment's sweep (``hydra.sweeper.params``), then the command
    line, parsed and checked: what the basic sweeper expands into runs."""
    return parse_checked([f"{key}={value}" for key, value in params.items()] + list(overrides), loader)


def sweep_values(override: Override) -> list[str] | None:
    """The values of a sweep (a,b / choice / range / glob); None for an
    interval, which only a sweeper plugin can sample."""
    try:
        return list(override.sweep_string_iterator())
    except HydraException:
        return None


def expand_sweeps(parsed: list[Override]) -> list[list[str]]:
    """Every run of a sweep, as Hydra's basic sweeper makes them: the product
    of each key's values, where a later override of a key replaces an earlier
    one (so the command line overrides an experiment's sweep)."""
    by_key: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if not override.is_sweep_override():
            by_key[key] = [override.input_line]
        elif (values := sweep_values(override)) is not None:
            by_key[key] = [f"{key}={v}" for v in values]
    return [list(combo) for combo in itertools.product(*by_key.values())]


def check_runs(runs: list[list[str]], loader: ConfigLoader, runs_here: bool) -> None:
    """Compose and validate every run. Composing is the slow part (a tenth of a
    second), so it is done once per distinct choice of config groups; the other
    overrides are then applied to a copy, as Hydra applies them after composing.
    (A pickled copy: five times faster than copy.deepcopy of a DictConfig.)"""
    parser = OverridesParser.create(config_loader=loader)
    parse = functools.cache(lambda arg: parser.parse_overrides([arg])[0])
    composed: dict[tuple[str, ...], bytes] = {}
    last_report = time.monotonic()
    for done, run in enumerate(runs, start=1):
        choices, values = [], []
        for override in map(parse, run):
            is_choice = (loader.repository.group_exists(override.key_or_group)
                         and not isinstance(override.value(), dict))  # Hydra's own rule
            (choices if is_choice else values).append(override)
        key = tuple(o.input_line for o in choices)
        if key not in composed:
            composed[key] = pickle.dumps(compose("config", overrides=list(key)))
        cfg = pickle.loads(composed[key])
        # Hydra's own step after composing (private, but stable since 1.1): its errors too.
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        validate(OmegaConf.to_object(cfg), runs_here)
        if time.monotonic() - last_report > PROGRESS_EVERY_S:
            print(f"moebench: checked {done} of {len(runs)} runs", file=sys.stderr)
            last_report = time.monotonic()


def preflight(argv: list[str]) -> None:
    """Compose and validate every run the command line asks for, an experiment's
    sweep (``hydra.sweeper.params``) included; exit 2 on bad input."""
    overrides = user_overrides(argv)
    if overrides is None:
        return
    try:
        with hydra_context() as app:
            loader = app.config_loader
            parse_checked(overrides, loader)  # before composing: the message lists the options
            # The config Hydra composes to launch a sweep: its sweep overrides left out.
            master = app.compose_config("config", overrides, run_mode=RunMode.MULTIRUN,
                                        validate_sweep_overrides=False)
            multirun = is_multirun(argv) or master.hydra.mode == RunMode.MULTIRUN
            params = (master.hydra.sweeper.get("params") or {}) if multirun else {}
            runs = expand_sweeps(sweep_overrides(params, overrides, loader))
            launcher = master.hydra.launcher._target_.rsplit(".", 1)[-1]
            check_runs(runs, loader, runs_here=not multirun or launcher in LOCAL_LAUNCHERS)
    except ConfigError as e:
        fail(str(e))
    except OverrideParseException as e:
        bad = next((a for a in overrides if "=" not in a), overrides[-1] if overrides else "")
        fail(f"malformed override {bad!r}: expected key=value, e.g. router=top2 or "
             f"trainer.max_steps=200 ({str(e).splitlines()[0]})")
    except (HydraException, OmegaConfBaseException) as e:
        fail(explain(e))


@hydra.main(version_base=None, config_path=f"pkg://{CONF_MODULE}", config_name="config")
def hydra_app(cfg: DictConfig) -> None:
    """One run; an interrupted one exits (130 or 143) so that a sweep stops there."""
    from moebench.interrupt import exit_stopped
    from moebench.run import RecordNotSaved, interrupted_by, run

    try:
        path = run(OmegaConf.to_object(cfg))
    except (ConfigError, DataError) as e:
        fail(str(e))
    except RecordNotSaved as e:
        print(f"moebench: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if path is not None and (stopped_by := interrupted_by(path)):
        exit_stopped(stopped_by)


def main() -> None:
    from moebench.interrupt import exit_stopped, signal_name

    try:
        register_all()
        preflight(sys.argv[1:])
        hydra_app()
    except KeyboardInterrupt as stop:  # before a record, or a signal repeated
        exit_stopped(signal_name(stop))


if __name__ == "__main__":
    main()
