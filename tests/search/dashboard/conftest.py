"""``search dashboard`` as users start it: a real server process, asked over real HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

# Straight to the server, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Dashboard:
    """A running ``search dashboard`` on 127.0.0.1:``port``."""

    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc, self.port = proc, port
        self.base = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """The status and the JSON answer (None when empty) of one request; errors are answers too."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with _DIRECT.open(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        return status, json.loads(raw) if raw else None

    def stop(self) -> tuple[str, str]:
        """Stop the server; what it printed on stdout and stderr."""
        self.proc.kill()
        return self.proc.communicate(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(dashboard: Dashboard, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if dashboard.proc.poll() is not None:
            raise AssertionError(f"dashboard exited {dashboard.proc.returncode}: {dashboard.proc.communicate()}")
        try:
            _DIRECT.open(f"{dashboard.base}/api/studies", timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"dashboard did not answer at {dashboard.base}")


@pytest.fixture
def dashboard(start_cli: Callable[..., subprocess.Popen]) -> Callable[..., Dashboard]:
    """Start ``search dashboard --port FREE ARGS...`` and wait until it answers."""

    def start(*args: str) -> Dashboard:
        port = _free_port()
        served = Dashboard(start_cli("dashboard", "--port", str(port), *args), port)
        _wait_http(served)
        return served

    return start
