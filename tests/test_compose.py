"""docker-compose.yml: valid against the Compose Specification, private, and running real commands.

No Docker engine runs here. The schema is the Compose Specification's JSON schema as shipped in
the docker-compose 1.29.2 wheel on PyPI (``compose/config/compose_spec.json``, Apache-2.0),
fetched once with ``pip download`` into pytest's cache and read from the wheel, never vendored.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from typing import Any

import pytest
import yaml

from helpers import REPO, parse_cli

SCHEMA_PACKAGE = "docker-compose==1.29.2"
VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="session")
def compose_schema(request: pytest.FixtureRequest) -> dict[str, Any]:
    cache = request.config.cache.mkdir("compose-spec")
    wheels = sorted(cache.glob("docker_compose-1.29.2-*.whl"))
    if not wheels:
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                  "--dest", str(cache), SCHEMA_PACKAGE], capture_output=True, text=True, timeout=300)
        wheels = sorted(cache.glob("docker_compose-1.29.2-*.whl"))
        if not wheels:
            pytest.skip(f"cannot fetch the Compose Specification schema (pip download {SCHEMA_PACKAGE}): "
                        f"{(fetched.stderr.strip().splitlines() or ['no output'])[-1]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        return json.loads(wheel.read("compose/config/compose_spec.json"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    lines = (REPO / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        found = env.get(name)
        if op in (":?", "?") and not found:
            raise KeyError(f"{name}: {arg}")
        if op == ":-":
            return found or arg
        if op == "-":
            return arg if found is None else found
        if found is None and op is None:
            raise KeyError(name)
        return found

    if isinstance(value, str):
        return VARIABLE.sub(one, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def variables(text: str) -> set[str]:
    return {m.group(1) for m in VARIABLE.finditer(text) if m.group(1)}


def test_the_compose_file_follows_the_compose_specification(compose, compose_schema, env_example):
    import jsonschema

    jsonschema.Draft7Validator.check_schema(compose_schema)
    validator = jsonschema.Draft7Validator(compose_schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    assert list(validator.iter_errors(interpolate(compose, env_example))) == [], "valid once .env is filled in"
    broken = {**compose, "services": {**compose["services"], "worker": {**compose["services"]["worker"], "gpu": 1}}}
    assert list(validator.iter_errors(broken)), "the schema does catch a key the specification lacks"


def test_postgres_keeps_its_data_checks_its_health_and_listens_on_localhost_only(compose, env_example):
    postgres = compose["services"]["postgres"]
    assert "pgdata:/var/lib/postgresql/data" in postgres["volumes"] and "pgdata" in compose["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{port}: published on every interface"
    # Credentials come from .env: nothing secret in the file, every variable documented.
    text = (REPO / "docker-compose.yml").read_text()
    assert "change-me" not in text and env_example["POSTGRES_PASSWORD"] not in text
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert variables(text) <= set(env_example), f"not in .env.example: {variables(text) - set(env_example)}"
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(compose, {k: v for k, v in env_example.items() if k != "POSTGRES_PASSWORD"})
    for name in ("dashboard", "worker"):
        assert compose["services"][name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_worker_reserves_the_gpus_and_scales(compose):
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == "all"
    # `docker compose up --scale worker=N` needs replicas that can coexist.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["stop_signal"] == "SIGTERM", "a stop fails and re-queues the running trials"


def test_the_services_run_the_clis_real_commands(compose, env_example):
    commands = {name: interpolate(service["command"], env_example)
                for name, service in compose["services"].items() if "command" in service}
    assert set(commands) == {"dashboard", "worker"}
    for name, argv in commands.items():
        assert argv[0] == "search", argv
        parse_cli(argv[1:])  # the command and every option exist, and the values convert
    assert parse_cli(commands["dashboard"][1:]).params["host"] == "0.0.0.0"
    launch = parse_cli(commands["worker"][1:]).params
    assert (launch["study"], launch["gpus"], launch["per_gpu"]) == (env_example["STUDY"], "all", 1)
    assert (REPO / "spaces" / f"{launch['study']}.yaml").is_file()
    with pytest.raises(Exception, match="No such option: --gpu"):
        parse_cli(["launch", "--study", "x", "--gpu", "all"])  # the check does catch a wrong option


def test_the_image_pins_the_same_torch_as_the_makefile():
    dockerfile = (REPO / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    (pinned,) = re.findall(r"torch==([\d.]+)", makefile)
    assert f"ARG TORCH_VERSION={pinned}" in dockerfile
    assert "SEARCH_SPACES_DIR=/app/spaces" in dockerfile and "COPY spaces ./spaces" in dockerfile
