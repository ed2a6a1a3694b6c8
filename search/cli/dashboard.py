"""``search dashboard``: optuna-dashboard on the storage the workers use, read-only unless told."""

from __future__ import annotations

from typing import Annotated

import typer

from search.cli.errors import CommandError
from search.cli.options import Storage, open_store
from search.cli.render import console, err_console


def dashboard(
    storage: Storage = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind; loopback unless told otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
    allow_writes: Annotated[bool, typer.Option(
        "--allow-writes", help="Let the dashboard create, rename and delete studies, edit notes and finish "
        "trials (default: read-only; the workers write notes and plots without it).")] = False,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", metavar="NAME", show_default=False,
        help="Another name clients reach it by (besides localhost, 127.0.0.1, ::1 and --host); repeatable.")] = None,
) -> None:
    """Serve optuna-dashboard on the storage the workers use."""
    from search.dashboard.serve import is_loopback, serve, served_names

    for name in allowed_host or []:
        if not name.strip() or "/" in name:
            raise CommandError(f"--allowed-host {name!r}: expected a host name or address (no scheme, no path)")
    opened, where = open_store(storage, create=False)
    mode = "writes allowed" if allow_writes else "read-only"
    if not is_loopback(host):
        can = ("read every study and create, delete and change studies, notes and trials (--allow-writes)"
               if allow_writes else "read every study (read-only: writes are refused)")
        err_console.print(f"warning: --host {host} is not loopback: anyone who can reach port {port} of this "
                          f"machine can {can}; it answers to {', '.join(served_names(host, allowed_host or []))}",
                          markup=False, highlight=False, soft_wrap=True)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"optuna-dashboard for {where} on http://{shown}:{port}/, {mode} (Ctrl-C stops it)",
                  markup=False, highlight=False, soft_wrap=True)
    try:
        serve(opened, host=host, port=port, allow_writes=allow_writes, allowed_hosts=allowed_host or [])
    except OSError as e:
        raise CommandError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
