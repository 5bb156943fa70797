"""The Kubernetes manifests: each overlay renders, validates offline against the Kubernetes
schemas (``kubernetes-validate --strict``), its KEDA ScaledObject against the schema in
deploy/schemas, and holds what a production deployment needs (probes, limits, non-root, …)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import DEPLOY
from tests.deploy.tools import OVERLAYS
from tests.deploy.tools import executable
from tests.deploy.tools import kustomize
from tests.deploy.tools import run

KUBERNETES_VERSION = "1.30.0"
ROLES = ("api", "worker", "manager")
CRD_KINDS = {"ScaledObject"}
SECRET_NAME = "taskmill-secrets"


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def _of(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _write(tmp_path: Path, name: str, docs: list[dict[str, Any]]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_kubernetes_validate_strict(rendered, tmp_path):
    overlay, docs = rendered
    tool = executable("kubernetes-validate", "pip install kubernetes-validate")
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    path = _write(tmp_path, f"{overlay}.yaml", core)
    out = run([tool, "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(path)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_kubernetes_validate_catches_an_unknown_field(tmp_path):
    """The validation can fail: a misspelt field of a Deployment is refused."""
    tool = executable("kubernetes-validate", "pip install kubernetes-validate")
    deployment = _of(kustomize("dev"), "Deployment")["taskmill-api"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    out = run(
        [
            tool,
            "--strict",
            "--quiet",
            "-k",
            KUBERNETES_VERSION,
            str(_write(tmp_path, "bad.yaml", [deployment])),
        ]
    )
    assert out.returncode != 0


def test_scaledobject_matches_the_keda_schema(rendered, tmp_path):
    overlay, docs = rendered
    tool = executable("check-jsonschema", "pip install check-jsonschema")
    schema = DEPLOY / "schemas" / "keda-scaledobject.schema.json"
    objects = list(_of(docs, "ScaledObject").values())
    assert [o["spec"]["scaleTargetRef"]["name"] for o in objects] == ["taskmill-worker"]
    files = []
    for i, obj in enumerate(objects):
        files.append(tmp_path / f"{overlay}-{i}.json")
        files[-1].write_text(json.dumps(obj))
    out = run([tool, "--schemafile", str(schema), *map(str, files)])
    assert out.returncode == 0, out.stdout + out.stderr
    bad = dict(objects[0], spec=dict(objects[0]["spec"], maxReplicas=3))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert run([tool, "--schemafile", str(schema), str(tmp_path / "bad.json")]).returncode != 0


def test_every_role_has_probes_limits_and_runs_unprivileged(rendered):
    _, docs = rendered
    deployments = _of(docs, "Deployment")
    for role in ROLES:
        d = deployments[f"taskmill-{role}"]
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert {"configMapRef": {"name": "taskmill-config"}} in c["envFrom"]
            assert {"secretRef": {"name": SECRET_NAME}} in c["envFrom"]
        main = pod["containers"][0]
        assert main["args"][0] == role
        live, ready = main["livenessProbe"]["httpGet"], main["readinessProbe"]["httpGet"]
        assert live["path"] == "/health/live"
        assert ready["path"] in ("/health", "/health/ready")
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert ports[live["port"]] == (8000 if role == "api" else 9100)
        assert d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(
            ports[live["port"]]
        )
        # the readiness check waits 2 s per component: the probe must allow for both
        assert main["readinessProbe"]["timeoutSeconds"] >= 5


def test_the_api_migrates_before_it_starts(rendered):
    _, docs = rendered
    pod = _of(docs, "Deployment")["taskmill-api"]["spec"]["template"]["spec"]
    assert [c["args"] for c in pod["initContainers"]] == [["db", "upgrade"]]


def test_workers_have_time_to_finish_and_their_replicas_belong_to_the_autoscaler(rendered):
    _, docs = rendered
    worker = _of(docs, "Deployment")["taskmill-worker"]
    assert "replicas" not in worker["spec"]
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30
    env = {e["name"]: e["value"] for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert int(env["TASKMILL_WORKER_CONCURRENCY"]) >= 1


def test_disruption_budgets_and_network_policies_select_real_pods(rendered):
    _, docs = rendered
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in _of(docs, "Deployment").values()]

    def selects(selector: dict[str, Any]) -> int:
        def match(labels: dict[str, str]) -> bool:
            ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
            for e in selector.get("matchExpressions", []):
                assert e["operator"] == "In"
                ok = ok and labels.get(e["key"]) in e["values"]
            return ok

        return sum(1 for labels in pods if match(labels))

    budgets = _of(docs, "PodDisruptionBudget")
    assert set(budgets) == {"taskmill-api", "taskmill-worker"}
    for pdb in budgets.values():
        assert selects(pdb["spec"]["selector"]) == 1
    policies = _of(docs, "NetworkPolicy")
    assert {"taskmill-api", "taskmill-metrics"} <= set(policies)
    assert selects(policies["taskmill-metrics"]["spec"]["podSelector"]) == 2
    ports = {p["port"] for r in policies["taskmill-metrics"]["spec"]["ingress"] for p in r["ports"]}
    assert ports == {9100}


def test_no_credential_is_committed():
    """Only the dev overlay generates a Secret, from values marked dev-only; prod expects one made
    outside the repository, and no manifest carries a credential in plain text elsewhere."""
    dev = _of(kustomize("dev"), "Secret")
    assert SECRET_NAME in dev
    for secret in dev.values():
        import base64

        for key, value in secret["data"].items():
            text = base64.b64decode(value).decode()
            if "PASSWORD" in key or "://" in text:
                assert "dev-only-password" in text, (secret["metadata"]["name"], key)
    assert _of(kustomize("prod"), "Secret") == {}
    for path in (DEPLOY / "kubernetes").rglob("*.yaml"):
        text = path.read_text()
        assert "kind: Secret" not in text, path
        for word in ("password=", "PASSWORD="):
            for line in text.splitlines():
                if word in line:
                    assert "dev-only-password" in line, (path, line)


def test_prod_pins_the_image_and_spreads_pods():
    docs = kustomize("prod")
    deployments = _of(docs, "Deployment")
    for d in deployments.values():
        for c in d["spec"]["template"]["spec"]["containers"]:
            image = c["image"]
            assert ":" in image and not image.endswith(":latest"), image
    assert deployments["taskmill-api"]["spec"]["replicas"] >= 2
    assert "topologySpreadConstraints" in deployments["taskmill-api"]["spec"]["template"]["spec"]
    so = _of(docs, "ScaledObject")["taskmill-worker"]["spec"]
    assert 1 <= so["minReplicaCount"] < so["maxReplicaCount"]
