"""``search k8s``: the Kubernetes manifests of a study's workers, its dashboard and (optionally)
its PostgreSQL, as one YAML file for ``kubectl apply -f``.

- The workers are an Indexed Job (``completionMode: Indexed``): ``parallelism`` and
  ``completions`` are the number of workers, each pod one ``search worker`` on its GPUs
  (``nvidia.com/gpu`` limits). With a study-wide ``--n-trials`` every worker ends, exit 0, when
  the study holds that many finished trials, and the Job completes.
- Failures: ``backoffLimitPerIndex`` retries a worker that died (exit 1, killed) in its own index;
  the ``podFailurePolicy`` fails the whole Job at once on a user error (exit 2: a bad spec, a
  storage that does not open: every pod would fail the same way), and ignores a pod disrupted by
  preemption, eviction or a node drain (``DisruptionTarget``): Kubernetes sends SIGTERM, the
  worker fails and re-queues its running trial, and a new pod takes its index, not counted.
- The storage URL is read from a Secret (``secretKeyRef``) and never written into a manifest;
  the spec travels in a ConfigMap, so that the pods run exactly the spec this command read.
- ``--postgres``: a PostgreSQL StatefulSet with a volume (its password from the same Secret) and
  a Service; the workers and the dashboard wait for it (an init container).
- The dashboard: a Deployment and a ClusterIP Service, reachable inside the cluster only
  (``kubectl port-forward``), read-only, answering to its Service's names.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

HEADER = "# Written by `search k8s`"
DEFAULT_IMAGE = "transformer-search:latest"  # docker-compose.yml's image name; push it where the cluster pulls
DEFAULT_SECRET = "search-storage"
URL_KEY, PASSWORD_KEY = "url", "password"
SPEC_DIR, SPEC_FILE = "/etc/search", "spec.yaml"
USER_ERROR = 2  # search's exit code for a user's mistake (search/cli/errors.py)
RETRIES_PER_WORKER = 3
DASHBOARD_PORT, POSTGRES_PORT = 8080, 5432
POSTGRES_IMAGE, POSTGRES_USER, POSTGRES_DB = "postgres:16", "search", "search"  # as docker-compose.yml
POSTGRES_VOLUME = "20Gi"
GPU_RESOURCE = "nvidia.com/gpu"
# What kubectl accepts: a DNS-1123 label (namespace), subdomain (Secret), an image reference.
LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the spec in its ConfigMap) as literal blocks, as they were written."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


class KubernetesError(Exception):
    """A name or an image Kubernetes would refuse: one line, exit 2."""


def written_by_k8s(text: str) -> bool:
    """Is ``text`` a file that ``search k8s`` wrote (its first line says so)?"""
    return text.startswith(HEADER)


def base_name(study_name: str) -> str:
    """``search-STUDY`` as a DNS label with room for the suffixes (``-dashboard``): a study name's
    ``.`` and ``_`` become ``-``, and it is cut to 40 characters."""
    slug = re.sub(r"[^a-z0-9-]+", "-", study_name.lower()).strip("-")
    return f"search-{slug}"[:47].rstrip("-")


def _check(option: str, value: str, pattern: re.Pattern, what: str) -> str:
    if not pattern.fullmatch(value):
        raise KubernetesError(f"{option} {value!r}: expected {what}")
    return value


def manifests(*, study_name: str, spec_text: str, worker_args: list[str], workers: int, gpus_per_worker: int,
              image: str = DEFAULT_IMAGE, secret: str = DEFAULT_SECRET, postgres: bool = False,
              dashboard: bool = True, namespace: str | None = None) -> list[dict[str, Any]]:
    """The objects ``kubectl apply`` creates, in order. ``worker_args`` are ``search worker``'s
    arguments after ``--study`` (which is the spec's path in the pods)."""
    _check("--image", image, IMAGE, "an image reference like registry.example.com/transformer-search:1.0")
    _check("--secret", secret, SUBDOMAIN, "a Secret name (lowercase letters, digits, - and .)")
    if namespace is not None:
        _check("--namespace", namespace, LABEL, "a namespace name (lowercase letters, digits and -, at most 63)")
    base = base_name(study_name)

    def meta(name: str, component: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name}
        if namespace:
            out["namespace"] = namespace
        out["labels"] = labels(component)
        out["annotations"] = {"transformer-search/study": study_name}
        return out

    def labels(component: str) -> dict[str, str]:
        return {"app.kubernetes.io/name": "transformer-search", "app.kubernetes.io/instance": base,
                "app.kubernetes.io/component": component}

    storage_env = {"name": "SEARCH_STORAGE", "valueFrom": {"secretKeyRef": {"name": secret, "key": URL_KEY}}}
    postgres_host = f"{base}-postgres"
    wait_for_postgres = [{
        "name": "wait-for-postgres",
        "image": POSTGRES_IMAGE,
        "command": ["sh", "-c", f"until pg_isready -h {postgres_host} -p {POSTGRES_PORT}; do sleep 2; done"],
    }] if postgres else []

    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(f"{base}-spec", "spec"),
        "data": {SPEC_FILE: spec_text},
    }]
    worker: dict[str, Any] = {
        "name": "worker",
        "image": image,
        "command": ["search", "worker", "--study", f"{SPEC_DIR}/{SPEC_FILE}", *worker_args],
        "env": [storage_env],
        "volumeMounts": [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
                         {"name": "shm", "mountPath": "/dev/shm"}],  # DataLoader and NCCL use shared memory
    }
    if gpus_per_worker:
        worker["resources"] = {"limits": {GPU_RESOURCE: gpus_per_worker}}
    worker_pod: dict[str, Any] = {
        "restartPolicy": "Never",  # a podFailurePolicy needs it: a failed pod is replaced, not restarted
        "terminationGracePeriodSeconds": 60,  # SIGTERM: the running trial is failed and re-queued
        **({"initContainers": wait_for_postgres} if postgres else {}),
        "containers": [worker],
        "volumes": [{"name": "spec", "configMap": {"name": f"{base}-spec"}},
                    {"name": "shm", "emptyDir": {"medium": "Memory"}}],
    }
    objects.append({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(f"{base}-workers", "worker"),
        "spec": {
            "completionMode": "Indexed",
            "completions": workers,
            "parallelism": workers,
            "backoffLimitPerIndex": RETRIES_PER_WORKER,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob",
                 "onExitCodes": {"containerName": "worker", "operator": "In", "values": [USER_ERROR]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {"metadata": {"labels": labels("worker")}, "spec": worker_pod},
        },
    })

    if postgres:
        selector = labels("postgres")
        objects += [{
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(postgres_host, "postgres"),
            "spec": {"clusterIP": "None", "selector": selector,
                     "ports": [{"name": "postgres", "port": POSTGRES_PORT, "targetPort": "postgres"}]},
        }, {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta(postgres_host, "postgres"),
            "spec": {
                "serviceName": postgres_host,
                "replicas": 1,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": selector},
                    "spec": {"containers": [{
                        "name": "postgres",
                        "image": POSTGRES_IMAGE,
                        "env": [
                            {"name": "POSTGRES_USER", "value": POSTGRES_USER},
                            {"name": "POSTGRES_DB", "value": POSTGRES_DB},
                            {"name": "POSTGRES_PASSWORD",
                             "valueFrom": {"secretKeyRef": {"name": secret, "key": PASSWORD_KEY}}},
                            # The volume's root holds lost+found: the data in a folder below it.
                            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                        ],
                        "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT}],
                        "readinessProbe": {"exec": {"command": ["pg_isready", "-U", POSTGRES_USER, "-d", POSTGRES_DB]},
                                           "periodSeconds": 5},
                        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
                    }]},
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": POSTGRES_VOLUME}}},
                }],
            },
        }]

    if dashboard:
        name = f"{base}-dashboard"
        selector = labels("dashboard")
        # The names a client inside the cluster reaches it by; port-forward's localhost is allowed anyway.
        hosts = [name, *([f"{name}.{namespace}", f"{name}.{namespace}.svc",
                          f"{name}.{namespace}.svc.cluster.local"] if namespace else [])]
        container: dict[str, Any] = {
            "name": "dashboard",
            "image": image,
            "command": ["search", "dashboard", "--host", "0.0.0.0", "--port", str(DASHBOARD_PORT),
                        *(a for host in hosts for a in ("--allowed-host", host))],
            "env": [storage_env],
            "ports": [{"name": "http", "containerPort": DASHBOARD_PORT}],
            # A TCP probe: an HTTP probe's Host (the pod's IP) is not a name the dashboard answers to.
            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10},
        }
        pod = {**({"initContainers": wait_for_postgres} if postgres else {}), "containers": [container]}
        objects += [{
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(name, "dashboard"),
            "spec": {"replicas": 1, "selector": {"matchLabels": selector},
                     "template": {"metadata": {"labels": selector}, "spec": pod}},
        }, {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(name, "dashboard"),
            "spec": {"type": "ClusterIP", "selector": selector,
                     "ports": [{"name": "http", "port": DASHBOARD_PORT, "targetPort": "http"}]},
        }]
    return objects


def manifest_file(objects: list[dict[str, Any]], *, study_name: str, workers: int, gpus_per_worker: int,
                  secret: str, postgres: bool) -> str:
    """The YAML documents, after a header that says how to create the Secret and apply them."""
    url = (f"postgresql+psycopg2://{POSTGRES_USER}:PASSWORD@{base_name(study_name)}-postgres:{POSTGRES_PORT}/{POSTGRES_DB}"
           if postgres else "postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB")
    literals = f"--from-literal={URL_KEY}='{url}'" + (f" --from-literal={PASSWORD_KEY}='PASSWORD'" if postgres else "")
    on = f"{gpus_per_worker} GPU(s)" if gpus_per_worker else "the CPU"
    header = [
        f"{HEADER}: study {study_name}, {workers} worker(s) on {on} each.",
        f"# The storage URL comes from the Secret {secret} (key {URL_KEY}); it is never written here:",
        f"#   kubectl create secret generic {secret} {literals}",
        "#   kubectl apply -f THIS_FILE",
    ]
    body = yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
    return "\n".join(header) + "\n---\n" + body
