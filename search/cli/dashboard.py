"""``search dashboard``: optuna-dashboard on the storage the workers use."""

from __future__ import annotations

from typing import Annotated

import typer

from search.cli.errors import CommandError
from search.cli.options import Storage, open_store
from search.cli.render import console


def dashboard(
    storage: Storage = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind; loopback unless told otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
) -> None:
    """Serve optuna-dashboard on the storage the workers use."""
    from optuna_dashboard import run_server

    opened, where = open_store(storage, create=False)
    console.print(f"optuna-dashboard for {where} on http://{host}:{port}/ (Ctrl-C stops it)", markup=False)
    try:
        run_server(opened, host=host, port=port)
    except OSError as e:
        raise CommandError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
