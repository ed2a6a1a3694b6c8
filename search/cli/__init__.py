"""``search``: run workers, watch studies, export and re-run the winners.

The commands live by layer (``running``: worker, launch, slurm; ``results``: status, studies,
export, run, confirm; ``dashboard``); the options they share in ``options``; everything they
show in ``render``. Here: the app, and how a user's mistake ends (one line, exit 2).
"""

from __future__ import annotations

import os
import sys
import time

import typer

from objectives import SetupError
from search.spec import SpecError
from search.study import StudyNotFound
from storage import StorageError


class CommandError(Exception):
    """Anything else a user can cause (a busy port, an unwritable file): one line, exit 2."""


USER_ERRORS = (SpecError, SetupError, StorageError, StudyNotFound, CommandError)

# The command modules raise CommandError: imported once it exists.
from search.cli import dashboard, results, running
from search.cli.render import err_console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hyperparameter search for transformer training, on Optuna.")
for command in (running.worker, running.launch, running.slurm, results.status, results.export, results.run,
                results.studies, results.confirm, dashboard.dashboard):
    app.command()(command)


def main() -> None:
    os.environ["TZ"] = "UTC"  # trial timestamps in UTC on every worker, whatever the machine's zone
    time.tzset()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        app()
    except USER_ERRORS as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("stopped")
        sys.exit(130)


if __name__ == "__main__":
    main()
