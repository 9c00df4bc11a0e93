"""``moebench-count-models [TASK ...] [--data PATH]``: every task's
count-model references on its whole evaluation splits (the synthetic task:
the majority class on 32,768 evaluation examples), and the seconds each took
to fit and score when it was computed; tasks whose data files are missing
are listed with the reason. Results are cached; a second call reads them."""

from __future__ import annotations

import argparse
import dataclasses

from moebench.commands.options import fail
from moebench.count_models.references import task_references
from moebench.errors import ConfigError, DataError
from moebench.tasks import TASKS
from moebench.tasks.data import default_data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moebench-count-models",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", nargs="*", help=f"default: every task ({', '.join(TASKS.names())})")
    parser.add_argument("--data", default=None, help="folder of the data sets; default: $MOEBENCH_DATA")
    args = parser.parse_args(argv)
    data = default_data() if args.data is None else dataclasses.replace(default_data(), root=args.data)
    for task in args.tasks or TASKS.names():
        try:
            references = task_references(task, data)
        except ConfigError as e:
            fail(str(e))
        except DataError as e:
            print(f"{task}: skipped: {e}")
            continue
        for ref in references:
            scores = ", ".join(f"{split} {value:#.4g}" for split, value in ref.quality.items())
            print(f"{task}: {ref.name}: {scores} (computed in {ref.seconds:.2f} s)")


if __name__ == "__main__":
    main()
