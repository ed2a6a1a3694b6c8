"""What ``search dashboard`` lets a client do: read by default, write only when told, and only
to requests addressed to its own names."""

from __future__ import annotations

import optuna
import pytest
from helpers import Store
from optuna_dashboard import get_note, save_note


def _study_with_a_running_trial(store: Store) -> tuple[optuna.Study, int, int]:
    """A study as a search leaves it mid-way: a completed trial (0.5), a running one, notes."""
    study = optuna.create_study(study_name=store.name("served"), storage=store.optuna, direction="maximize")
    done = study.ask()
    study.tell(done, 0.5)
    running = study.ask()
    save_note(study, "the service's study note")
    save_note(done, "the service's trial note")
    return study, done._trial_id, running._trial_id


def _stored(store: Store, study: optuna.Study, trial_id: int) -> tuple:
    """Everything a forged request could change: the studies, their trials, both notes."""
    return store.snapshot(), get_note(study), get_note(optuna.trial.Trial(study, trial_id))


def _note_version(dashboard, study_id: int) -> int:
    status, detail = dashboard.request("GET", f"/api/studies/{study_id}")
    assert status == 200
    return detail["note"]["version"]


def test_dashboard_is_read_only_by_default_and_answers_only_its_names(store, dashboard):
    study, done_id, running_id = _study_with_a_running_trial(store)
    study_id = study._study_id
    before = _stored(store, study, done_id)
    served = dashboard("--storage", store.url)

    status, listed = served.request("GET", "/api/studies")
    assert status == 200 and study.study_name in {s["study_name"] for s in listed["study_summaries"]}
    version = _note_version(served, study_id)

    # What optuna-dashboard's front end sends for each of its write buttons, well-formed.
    writes = [
        ("POST", "/api/studies", {"study_name": store.name("created"), "directions": ["maximize"]}),
        ("POST", f"/api/studies/{study_id}/rename", {"study_name": store.name("renamed")}),
        ("DELETE", f"/api/studies/{study_id}", {"remove_associated_artifacts": True}),
        ("PUT", f"/api/studies/{study_id}/note", {"version": version + 1, "body": "forged"}),
        ("PUT", f"/api/studies/{study_id}/{done_id}/note", {"version": version + 1, "body": "forged"}),
        ("POST", f"/api/trials/{running_id}/tell", {"state": "Complete", "values": [0.99]}),
        ("POST", f"/api/trials/{done_id}/user-attrs", {"user_attrs": {"forged": True}}),
        ("POST", "/incompatible-rdb-schema", {}),
    ]
    for method, path, body in writes:
        status, answer = served.request(method, path, body)
        assert status == 403, (method, path, status, answer)
        assert "read-only" in answer["reason"] and "--allow-writes" in answer["reason"]
    assert _stored(store, study, done_id) == before  # the running trial still runs, 0.5 still best

    # A page whose DNS name was re-pointed at 127.0.0.1 (rebinding) carries its own name in Host.
    for host in (f"attacker.example:{served.port}", "attacker.example", f"127.0.0.1.attacker.example:{served.port}"):
        status, answer = served.request("GET", "/api/studies", headers={"Host": host})
        assert status == 400 and "--allowed-host" in answer["reason"], host
    for host in (f"localhost:{served.port}", f"[::1]:{served.port}", "LOCALHOST."):
        assert served.request("GET", "/api/meta", headers={"Host": host})[0] == 200, host

    out, err = served.stop()
    assert ", read-only (Ctrl-C stops it)" in out
    assert "warning" not in err  # loopback: nothing to warn about


@pytest.mark.parametrize("store", ["journal"], indirect=True)
def test_allow_writes_saves_a_note_but_not_for_a_page_from_elsewhere(store, dashboard):
    study, done_id, _ = _study_with_a_running_trial(store)
    served = dashboard("--storage", store.url, "--allow-writes")
    version = _note_version(served, study._study_id)
    edit = {"version": version + 1, "body": "edited in the dashboard"}

    # A cross-site form or script: the browser names the page's origin.
    status, answer = served.request("PUT", f"/api/studies/{study._study_id}/note", edit,
                                    headers={"Origin": "http://attacker.example"})
    assert status == 403 and "attacker.example" in answer["reason"]
    assert get_note(study) == "the service's study note"

    # The dashboard's own page.
    status, _ = served.request("PUT", f"/api/studies/{study._study_id}/note", edit,
                               headers={"Origin": f"http://127.0.0.1:{served.port}"})
    assert status == 204
    assert get_note(study) == "edited in the dashboard"
    out, _ = served.stop()
    assert ", writes allowed (Ctrl-C stops it)" in out


@pytest.mark.parametrize("store", ["journal"], indirect=True)
@pytest.mark.parametrize("writes", [[], ["--allow-writes"]], ids=["read-only", "writes"])
def test_every_interface_is_said_on_stderr_and_answers_only_named_hosts(store, dashboard, writes):
    _study_with_a_running_trial(store)
    served = dashboard("--storage", store.url, "--host", "0.0.0.0", "--allowed-host", "Dash.Example", *writes)
    assert served.request("GET", "/api/studies", headers={"Host": f"dash.example:{served.port}"})[0] == 200
    assert served.request("GET", "/api/studies", headers={"Host": f"other.example:{served.port}"})[0] == 400
    assert served.request("GET", "/api/studies", headers={"Host": f"0.0.0.0:{served.port}"})[0] == 400

    _, err = served.stop()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert f"--host 0.0.0.0 is not loopback: anyone who can reach port {served.port} of this machine can" in warnings[0]
    assert "localhost, 127.0.0.1, ::1, dash.example" in warnings[0]
    if writes:
        assert "create, delete and change studies, notes and trials (--allow-writes)" in warnings[0]
    else:
        assert "read every study (read-only: writes are refused)" in warnings[0]


def test_an_allowed_host_with_a_scheme_or_path_is_refused(cli):
    result = cli("dashboard", "--allowed-host", "http://dash.example/", "--storage", "never-created.journal")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --allowed-host 'http://dash.example/': "
                                     "expected a host name or address (no scheme, no path)")
