"""A password in a storage URL, in whichever form it is written, never shows in what `search`
prints: the status title, `studies`, JSON records, error lines; `search launch --storage URL`
warns that its own command line shows it and keeps it off its workers' command lines.

Real `search` processes against the real PostgreSQL (trust authentication accepts any password,
so URLs with a password connect) and against a port where nothing listens.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from helpers import known

from storage import StorageError, mask_url, open_storage
from storage._open import PLACEHOLDER_PASSWORD

SECRET = "S3cretPw"


def with_password(url: str, password: str = SECRET) -> str:
    """``scheme://user@host...`` -> ``scheme://user:PASSWORD@host...``."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def everything_printed(result) -> str:
    return result.stdout + result.stderr


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u@db/x?password=S3cretPw", "postgresql://u@db/x?password=***"),
    ("postgresql://u:S3cretPw@db/x?sslmode=disable&PASSWORD=S3cretPw", "postgresql://u:***@db/x?sslmode=disable&PASSWORD=***"),
    ("postgresql://u:S3c@retPw@db/x", "postgresql://u:***@db/x"),
    ("u:S3cretPw@db:5432/x", "u:***@db:5432/x"),
    ("sqlite:////tmp/a/studies.db", "sqlite:////tmp/a/studies.db"),
])
def test_mask_url_hides_every_form_of_password(url, shown):
    assert mask_url(url) == shown


def test_status_and_studies_never_show_a_query_password(pg_url, cli):
    """Connected (trust auth): the title of `studies`, its JSON record and the error of `status`
    on a study that does not exist name the store, never the password."""
    for url in (f"{pg_url}?password={SECRET}", with_password(pg_url) + f"?sslmode=disable&password={SECRET}"):
        studies = cli("studies", "--storage", url)
        assert studies.returncode == 0, everything_printed(studies)
        assert "127.0.0.1" in studies.stdout and SECRET not in everything_printed(studies)
        as_json = cli("studies", "--storage", url, "--format", "json")
        assert as_json.returncode == 0 and json.loads(as_json.stdout)["storage"] == mask_url(url)
        assert SECRET not in everything_printed(as_json)
        status = cli("status", "--study", "no-such-study", "--storage", url)
        assert status.returncode == 2 and "no-such-study" in status.stderr, everything_printed(status)
        assert SECRET not in everything_printed(status)


def test_a_server_that_does_not_answer_is_one_line_without_the_password(cli):
    for url in (f"postgresql+psycopg2://postgres:{SECRET}@127.0.0.1:1/test",
                f"postgresql+psycopg2://postgres@127.0.0.1:1/test?password={SECRET}"):
        for args in (("status", "--study", "s"), ("studies",)):
            result = cli(*args, "--storage", url)
            assert result.returncode == 2, everything_printed(result)
            assert "cannot connect" in result.stderr and len(result.stderr.strip().splitlines()) == 1
            assert SECRET not in everything_printed(result)


@pytest.mark.parametrize(("url", "says"), [
    # An unencoded '@': SQLAlchemy would take "retPw@127.0.0.1" for the host and echo it.
    ("postgresql+psycopg2://postgres:S3c@retPw@127.0.0.1:5432/test", "write an '@' of the password as %40"),
    # No scheme: it would be taken for a file name and echoed.
    (f"postgres:{SECRET}@127.0.0.1:5432/test", "a URL without its scheme"),
])
def test_a_misread_password_is_refused_without_showing_it(url, says, cli):
    for args in (("status", "--study", "s"), ("studies",), ("studies", "--format", "json")):
        result = cli(*args, "--storage", url)
        assert result.returncode == 2 and says in result.stderr, everything_printed(result)
        assert len(result.stderr.strip().splitlines()) == 1
        for piece in ("S3c@retPw", "retPw", SECRET):
            assert piece not in everything_printed(result)


def test_the_placeholder_password_of_the_env_example_is_refused(pg_url, cli, tmp_path):
    """.env.example's password works on a fresh compose stack: every command refuses it."""
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    assert f"POSTGRES_PASSWORD={PLACEHOLDER_PASSWORD}\n" in example, "the rule follows the example"
    url = with_password(pg_url, PLACEHOLDER_PASSWORD)
    for args in (("status", "--study", "s"), ("studies",), ("export", "--study", "s", "-o", "best.yaml")):
        result = cli(*args, "--storage", url)
        assert result.returncode == 2, everything_printed(result)
        assert "placeholder of .env.example" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert PLACEHOLDER_PASSWORD not in everything_printed(result)
    via_env = cli("studies", env={"SEARCH_STORAGE": f"{pg_url}?password={PLACEHOLDER_PASSWORD}"})
    assert via_env.returncode == 2 and "placeholder" in via_env.stderr
    with pytest.raises(StorageError, match="placeholder"):
        open_storage(url)


@pytest.mark.usefixtures("data_dir")
def test_launch_warns_and_its_workers_get_the_url_through_their_environment(pg_store, write_spec, start_cli,
                                                                           tmp_path):
    name = pg_store.name("secret")
    spec = write_spec(name, known=[known("k0", 1e-3, 8)], pruner={"type": "NopPruner"},
                      edit=lambda s: s["space"]["num_train_epochs"].update(high=8))
    url = with_password(pg_store.url)
    launch = start_cli("launch", "--study", str(spec), "--storage", url, "--gpus", "none", "--per-gpu", "1",
                       "--log-dir", str(tmp_path / "logs"))
    deadline = time.monotonic() + 180
    while not (running := [t for t in pg_store.trials(name) if t.state.name == "RUNNING"]
               if name in pg_store.study_names() else []):
        assert launch.poll() is None, launch.communicate()
        assert time.monotonic() < deadline, "no worker started a trial"
        time.sleep(0.2)
    worker_pid = int(running[0].system_attrs["search:worker"].rsplit(":", 1)[1])
    cmdline = Path(f"/proc/{worker_pid}/cmdline").read_bytes().split(b"\0")
    environ = Path(f"/proc/{worker_pid}/environ").read_bytes().split(b"\0")
    launch.send_signal(signal.SIGTERM)
    out, err = launch.communicate(timeout=120)
    assert not any(SECRET.encode() in arg for arg in cmdline), cmdline
    assert f"SEARCH_STORAGE={url}".encode() in environ
    assert "--storage shows its password to other users of this machine (ps); set SEARCH_STORAGE instead" in err
    assert SECRET not in out + err
    for log in (tmp_path / "logs").iterdir():
        assert SECRET not in log.read_text()
