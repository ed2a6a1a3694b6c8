"""`search k8s`: the manifests it writes, checked against Kubernetes' own JSON schemas (shipped
offline by the kubernetes-validate package, strict: an unknown field is an error) and against the
rules the API server adds to them; their commands parsed by the real CLI; the dashboard's
command served for real and asked by its Service's name.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request

import kubernetes_validate
import pytest
import yaml

from helpers import REPO, command, parse_cli, run_main

SECRET = "postgresql+psycopg2://alice:s3cr3t-pw@db.internal:5432/studies"
# The oldest Kubernetes with every field used here GA (backoffLimitPerIndex: 1.33), and the newest
# the package knows.
KUBERNETES = ("1.33.0", kubernetes_validate.latest_version())


@pytest.fixture
def k8s(monkeypatch, capsys, tmp_path):
    """`search k8s ARGS` in tmp_path, in this process: (exit code, stdout, stderr, the objects written)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEARCH_STORAGE", SECRET)  # whatever the environment holds never reaches the file

    def run(*args: str, output: str = "out.yaml"):
        code, out, err = run_main(monkeypatch, capsys, "k8s", *args, "-o", output)
        path = tmp_path / output
        objects = [d for d in yaml.safe_load_all(path.read_text()) if d] if code == 0 else None
        return code, out, err, objects

    return run


def by_kind(objects: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for obj in objects:
        out.setdefault(obj["kind"], []).append(obj)
    return out


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def assert_api_server_would_accept(objects: list[dict]) -> None:
    """What the schemas cannot say and the API server checks: selectors select their pods, a
    StatefulSet's Service exists, every mounted volume and ConfigMap exists, names are DNS labels."""
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert len(names) == len(objects), "no two objects of a kind share a name"
    for obj in objects:
        for version in KUBERNETES:
            kubernetes_validate.validate(obj, version, strict=True)
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and name.replace("-", "").isalnum() and name == name.lower(), name
        if "template" in obj.get("spec", {}):
            spec = pod_spec(obj)
            labels = obj["spec"]["template"]["metadata"]["labels"]
            if "selector" in obj["spec"]:
                assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            claims = {c["metadata"]["name"] for c in obj["spec"].get("volumeClaimTemplates", [])}
            for container in spec.get("initContainers", []) + spec["containers"]:
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes or mount["name"] in claims, mount
            for volume in volumes.values():
                if "configMap" in volume:
                    assert ("ConfigMap", volume["configMap"]["name"]) in names
        if obj["kind"] == "StatefulSet":
            assert ("Service", obj["spec"]["serviceName"]) in names
        if obj["kind"] == "Service":
            selected = [o for o in objects if "template" in o.get("spec", {})
                        and obj["spec"]["selector"].items() <= o["spec"]["template"]["metadata"]["labels"].items()]
            assert len(selected) == 1, f"Service {name} selects exactly one workload's pods"
            ports = {p["name"] for c in pod_spec(selected[0])["containers"] for p in c.get("ports", [])}
            assert {p["targetPort"] for p in obj["spec"]["ports"]} <= ports


@pytest.mark.parametrize("args", [
    [],
    ["--postgres", "--namespace", "research", "--n-trials", "40"],
    ["--gpus-per-worker", "0", "--no-dashboard"],
    ["--gpus-per-worker", "4", "--postgres", "--set", "num_train_epochs=3", "--name", "mpr.v2_a"],
], ids=["default", "postgres", "cpu", "multi-gpu"])
def test_every_manifest_is_a_valid_kubernetes_object(k8s, args):
    code, _, err, objects = k8s("--study", "recipe-mpr", "--workers", "4", *args)
    assert code == 0, err
    assert_api_server_would_accept(objects)
    kinds = by_kind(objects)
    assert "Secret" not in kinds, "the user creates the Secret; its value is never written"
    assert ("StatefulSet" in kinds) == ("--postgres" in args)
    assert ("Deployment" in kinds) == ("--no-dashboard" not in args)


def test_the_workers_are_an_indexed_job_that_stops_on_user_errors_and_retries_preemption(k8s, tmp_path):
    code, out, err, objects = k8s("--study", "recipe-mpr", "--workers", "8", "--gpus-per-worker", "2",
                                  "--n-trials", "100", "--image", "registry.example.com/ts:1.0")
    assert code == 0, err
    (job,) = by_kind(objects)["Job"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["parallelism"], spec["completions"]) == ("Indexed", 8, 8)
    assert spec["backoffLimitPerIndex"] >= 1, "a worker that dies is retried in its index"
    rules = spec["podFailurePolicy"]["rules"]
    user_error = next(r for r in rules if "onExitCodes" in r)
    assert user_error["action"] == "FailJob" and user_error["onExitCodes"]["operator"] == "In"
    assert user_error["onExitCodes"]["values"] == [2] and user_error["onExitCodes"]["containerName"] == "worker"
    disruption = next(r for r in rules if "onPodConditions" in r)
    assert disruption == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    pod = pod_spec(job)
    assert pod["restartPolicy"] == "Never", "the API server requires it with a podFailurePolicy"
    (worker,) = pod["containers"]
    assert worker["image"] == "registry.example.com/ts:1.0"
    assert worker["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert worker["env"] == [{"name": "SEARCH_STORAGE",
                              "valueFrom": {"secretKeyRef": {"name": "search-storage", "key": "url"}}}]

    argv = worker["command"]
    assert argv[0] == "search"
    params = parse_cli(argv[1:]).params  # a real `search worker` command line
    assert params["n_trials"] == 100 and params["budget"] == "study" and params["gpus_per_trial"] == 2
    assert params["storage"] is None, "the worker reads $SEARCH_STORAGE, from the Secret"
    (config,) = by_kind(objects)["ConfigMap"]
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "spec")
    assert params["study"] == f"{mount['mountPath']}/spec.yaml"
    assert config["data"]["spec.yaml"] == (REPO / "spaces" / "recipe-mpr.yaml").read_text(), "the spec, verbatim"

    text = (tmp_path / "out.yaml").read_text()
    for secret in (SECRET, "s3cr3t-pw", "alice", "db.internal"):
        assert secret not in text and secret not in out
    assert text.startswith("# Written by `search k8s`")
    assert "kubectl create secret generic search-storage --from-literal=url=" in text


def test_a_user_error_is_the_exit_code_the_job_stops_on(monkeypatch, capsys, tmp_path):
    """The podFailurePolicy's exit 2 is what a worker ends with when the spec is wrong: in a pod
    it would fail the same way on every retry."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    code, _, err = run_main(monkeypatch, capsys, "worker", "--study", str(tmp_path / "missing.yaml"))
    assert code == 2 and err.startswith("error: no study spec")


def test_postgres_is_a_statefulset_with_a_volume_and_its_password_from_the_secret(k8s):
    code, _, err, objects = k8s("--study", "recipe-mpr", "--workers", "2", "--postgres", "--secret", "db-secret")
    assert code == 0, err
    kinds = by_kind(objects)
    (db,) = kinds["StatefulSet"]
    claim = db["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    (postgres,) = pod_spec(db)["containers"]
    env = {e["name"]: e for e in postgres["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "db-secret", "key": "password"}}
    assert any(m["name"] == claim["metadata"]["name"] for m in postgres["volumeMounts"])
    service = next(s for s in kinds["Service"] if s["metadata"]["name"] == db["spec"]["serviceName"])
    # The workers and the dashboard wait for the database instead of failing with exit 2.
    for workload in (kinds["Job"][0], kinds["Deployment"][0]):
        (wait,) = pod_spec(workload)["initContainers"]
        assert f"pg_isready -h {service['metadata']['name']} -p 5432" in wait["command"][-1]
        (container,) = pod_spec(workload)["containers"]
        assert container["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "db-secret", "key": "url"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, host: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/studies", headers={"Host": host})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_dashboard_is_read_only_inside_the_cluster_and_answers_to_its_service_name(k8s, cli_env, tmp_path):
    code, _, err, objects = k8s("--study", "recipe-mpr", "--workers", "1", "--namespace", "research")
    assert code == 0, err
    kinds = by_kind(objects)
    (deployment,) = kinds["Deployment"]
    (service,) = [s for s in kinds["Service"] if s["metadata"]["name"] == deployment["metadata"]["name"]]
    assert service["spec"]["type"] == "ClusterIP", "reachable inside the cluster only (or by kubectl port-forward)"
    (container,) = pod_spec(deployment)["containers"]
    assert "tcpSocket" in container["readinessProbe"], "an HTTP probe's Host would be refused"
    params = parse_cli(container["command"][1:]).params
    assert params["host"] == "0.0.0.0" and params["port"] == service["spec"]["ports"][0]["port"]
    assert not params["allow_writes"] and params["storage"] is None
    name = service["metadata"]["name"]
    assert {name, f"{name}.research.svc", f"{name}.research.svc.cluster.local"} <= set(params["allowed_host"])

    # The pod's command, served for real (on a free port, a journal file for the storage).
    port = _free_port()
    argv = [a if a != str(params["port"]) else str(port) for a in container["command"][1:]]
    (tmp_path / "studies.journal").touch()
    proc = subprocess.Popen(command(*argv), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**cli_env, "SEARCH_STORAGE": str(tmp_path / "studies.journal")})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status = _get(port, f"{name}:{port}")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.3)
        assert status == 200, "another pod asks http://SERVICE:PORT/"
        assert _get(port, f"{name}.research.svc.cluster.local:{port}") == 200
        assert _get(port, f"attacker.example:{port}") == 400, "a name it was not given"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize(("args", "message"), [
    (["--image", "ts:1.0\nkind: Secret"], "error: --image 'ts:1.0\\nkind: Secret': expected an image reference"),
    (["--image", "ts 1.0"], "error: --image 'ts 1.0': expected an image reference"),
    (["--namespace", "Research"], "error: --namespace 'Research': expected a namespace name"),
    (["--secret", "my_secret"], "error: --secret 'my_secret': expected a Secret name"),
])
def test_a_name_kubernetes_would_refuse_is_one_line_and_nothing_is_written(k8s, tmp_path, args, message):
    code, _, err, _ = k8s("--study", "recipe-mpr", "--workers", "1", *args)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_o_does_not_overwrite_a_file_it_did_not_write_without_force(k8s, tmp_path):
    (tmp_path / "notes.yaml").write_text("my: notes\n")
    code, _, err, _ = k8s("--study", "recipe-mpr", "--workers", "1", output="notes.yaml")
    assert code == 2 and "notes.yaml exists and was not written by `search k8s`" in err
    assert (tmp_path / "notes.yaml").read_text() == "my: notes\n"
    assert k8s("--study", "recipe-mpr", "--workers", "1")[0] == 0
    assert k8s("--study", "recipe-mpr", "--workers", "3")[0] == 0, "its own file is rewritten"
    assert by_kind(k8s("--study", "recipe-mpr", "--workers", "2")[3])["Job"][0]["spec"]["parallelism"] == 2
    assert k8s("--study", "recipe-mpr", "--workers", "1", "--force", output="notes.yaml")[0] == 0


def test_names_follow_the_study_name_as_dns_labels(k8s):
    code, _, err, objects = k8s("--study", "recipe-mpr", "--workers", "1", "--name", "mpr.v2_a" + "x" * 80)
    assert code == 0, err
    assert_api_server_would_accept(objects)
    for obj in objects:
        assert obj["metadata"]["name"].startswith("search-mpr-v2-a")
        assert obj["metadata"]["annotations"]["transformer-search/study"] == "mpr.v2_a" + "x" * 80
