"""``search``: run workers, watch studies, export and re-run the winners.

The commands live by layer (``running``: worker, launch, slurm, k8s; ``results``: status, studies,
export, run, confirm; ``dashboard``; ``store``: check, repair); the options they share in
``options``; everything they
show in ``render``. Here: the app, and how a user's mistake ends (one line, exit 2).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import typer

from search.cli import dashboard, results, running, store
from search.cli.errors import USER_ERRORS, CommandError
from search.cli.render import err_console

__all__ = ["USER_ERRORS", "CommandError", "app", "main"]

STOPPED = 130  # the exit code of a command stopped by Ctrl-C or SIGTERM


def _stoppable(command: Callable[..., Any]) -> Callable[..., Any]:
    """Ctrl-C or SIGTERM (raised as KeyboardInterrupt) ends a command with "stopped", exit 130
    (typer would otherwise turn it into a silent exit)."""

    @functools.wraps(command)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print("stopped")
            raise typer.Exit(STOPPED) from None

    return call


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hyperparameter search for transformer training, on Optuna.")
for command in (running.worker, running.launch, running.slurm, running.k8s, results.status, results.export, results.run,
                results.studies, results.confirm, dashboard.dashboard):
    app.command()(_stoppable(command))
for command in (store.check, store.repair):
    store.app.command()(_stoppable(command))
app.add_typer(store.app)


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
    except KeyboardInterrupt:  # between commands' code and typer (while parsing, say)
        err_console.print("stopped")
        sys.exit(STOPPED)


if __name__ == "__main__":
    main()
