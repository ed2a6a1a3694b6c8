"""How ``search dashboard`` serves optuna-dashboard: read-only unless writes are asked for, and
only to requests addressed to a name of this server.

optuna-dashboard's own API writes: it creates, renames and deletes studies, saves notes, tells
running trials their result, sets trial attributes and upgrades an RDB schema. The service needs
none of it (the workers write notes and plots through the storage), so by default ``guard``
answers every request that is not a read (GET, HEAD, OPTIONS) with 403. Every POST
optuna-dashboard serves writes, except its LLM queries, which answer 400 here anyway: no LLM
provider is configured. The front end reads with GET only; its write buttons get the refusal's
reason shown.

A web page elsewhere can make a browser send requests to a loopback address: by a DNS name it
re-points at 127.0.0.1 (rebinding; the request then carries the attacker's name in ``Host``), or
by a cross-site form or script (the request carries the page's ``Origin``). ``guard`` answers only
requests whose ``Host`` is a name of this server, and refuses writes from another ``Origin``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

READS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")  # a bind address meaning every interface, never a Host a client sends

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def host_name(value: str) -> str:
    """The name part of a ``Host`` value or of a host given on the command line: no port, no
    IPv6 brackets, lower case, no trailing dot (``[::1]:8080`` -> ``::1``, ``Example.org.:80``
    -> ``example.org``)."""
    value = value.strip()
    if value.startswith("["):
        name = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        name = value.partition(":")[0]
    else:
        name = value  # a bare name or a bare IPv6 address
    return name.lower().rstrip(".")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine (``localhost`` or a loopback
    address); any other name or address may be reachable from elsewhere."""
    name = host_name(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def served_names(host: str, allowed_hosts: Iterable[str] = ()) -> tuple[str, ...]:
    """The ``Host`` names a dashboard bound to ``host`` answers: the loopback names, the bind
    address itself (unless it is the every-interface wildcard) and ``allowed_hosts``."""
    names = [*LOOPBACK_NAMES, host_name(host), *(host_name(h) for h in allowed_hosts)]
    return tuple(dict.fromkeys(n for n in names if n not in WILDCARDS))


def _refuse(start_response: Callable[..., Any], status: str, reason: str) -> Iterator[bytes]:
    # optuna-dashboard's front end shows a JSON error's "reason" to the user.
    body = json.dumps({"reason": reason}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    yield body


def guard(app: WSGIApp, *, names: tuple[str, ...], allow_writes: bool) -> WSGIApp:
    """``app`` answering only requests addressed to one of ``names``; writes refused (403) unless
    ``allow_writes``, and then still refused from a page of another origin."""
    shown = ", ".join(names)

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST", "")
        if host_name(host) not in names:
            return _refuse(start_response, "400 Bad Request",
                           f"Host {host!r} is not a name of this dashboard ({shown}); "
                           f"search dashboard --allowed-host NAME adds one")
        if environ.get("REQUEST_METHOD", "GET").upper() in READS:
            return app(environ, start_response)
        if not allow_writes:
            return _refuse(start_response, "403 Forbidden",
                           "This dashboard is read-only: nothing in the storage can be created, deleted "
                           "or changed through it (search dashboard --allow-writes serves one that can)")
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and host_name(urlsplit(origin).netloc) not in names:
            return _refuse(start_response, "403 Forbidden",
                           f"Origin {origin!r} may not write to this dashboard: a page must be "
                           f"served from one of its names ({shown})")
        return app(environ, start_response)

    return guarded


def serve(storage: Any, *, host: str, port: int, allow_writes: bool, allowed_hosts: Iterable[str] = ()) -> None:
    """Serve optuna-dashboard on ``storage`` at ``host:port`` behind ``guard`` until Ctrl-C; an
    OSError if the address cannot be bound."""
    from bottle import run
    from optuna_dashboard import wsgi

    app = guard(wsgi(storage), names=served_names(host, allowed_hosts), allow_writes=allow_writes)
    run(app, host=host, port=port)
