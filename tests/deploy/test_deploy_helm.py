"""The Helm chart lints (strict), renders with default, all-features and CPU values, and every manifest validates.

Built-in kinds are validated by kubernetes-validate in strict mode (unknown fields are errors) against the
oldest and newest Kubernetes versions the chart claims; the custom resources (KEDA, Prometheus Operator)
against the strict subset schemas in ``crd_schemas/``. A kind with neither schema fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.deploy_helpers import CHART, Rendered, all_features_values, render_chart, values_named

CRD_SCHEMAS = Path(__file__).resolve().parent / "crd_schemas"
KUBE_VERSIONS = ("1.27.0", "1.37.0")  # Chart.yaml kubeVersion >=1.27 .. newest bundled schemas


def _crd_schema(doc: dict[str, Any]) -> dict[str, Any] | None:
    group = doc["apiVersion"].split("/")[0].split(".")[0]
    version = doc["apiVersion"].split("/")[-1]
    path = CRD_SCHEMAS / f"{doc['kind'].lower()}-{group}-{version}.json"
    if not path.exists():
        return None
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _validate(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        schema = _crd_schema(doc)
        if schema is None:
            pytest.fail(f"no schema for {doc['apiVersion']} {doc['kind']}: add one to {CRD_SCHEMAS}")
        jsonschema.Draft202012Validator(schema).validate(doc)


@pytest.mark.parametrize("values_name", ["default", "all-features", "cpu"])
def test_chart_lints_strict(values_name: str) -> None:
    values = values_named(values_name)
    report = helm_python.lint(str(CHART), values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    # severity 1 = info ("icon is recommended" has no honest value here); warnings (2) and errors (3) fail
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("fixture", ["rendered_default", "rendered_all", "rendered_cpu"])
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_validates(fixture: str, version: str, request: pytest.FixtureRequest) -> None:
    rendered: Rendered = request.getfixturevalue(fixture)
    docs = list(rendered.docs())
    assert docs
    for doc in docs:
        try:
            _validate(doc, version)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(
                f"{rendered.values_name}: {doc['kind']}/{doc['metadata']['name']} (k8s {version}): {exc}"
            )


def test_validation_can_fail() -> None:
    """Both validators reject a wrong manifest (so the test above is a real check)."""
    bad_deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "replicas": 1,
            "selector": {},
            "template": {"spec": {"containers": [{"name": "c", "imag": "x"}]}},
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(bad_deploy, "1.30.0")
    bad_so = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {
            "scaleTargetRef": {"name": "w"},
            "triggers": [{"type": "redis-streams", "metadata": {"steam": "s"}}],
        },
    }
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad_so, "1.30.0")


def test_default_render_contents(rendered_default: Rendered) -> None:
    assert rendered_default.kinds() == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "Service",
            "Service",
            "ServiceAccount",
            "StatefulSet",
        ]
    )


def test_all_features_render_contents(rendered_all: Rendered) -> None:
    kinds = rendered_all.kinds()
    for kind in ("ScaledObject", "TriggerAuthentication", "PrometheusRule", "PersistentVolumeClaim"):
        assert kind in kinds
    assert kinds.count("ServiceMonitor") == 2
    dashboard = rendered_all.find("ConfigMap", "-dashboard")
    assert json.loads(dashboard["data"]["evotok.json"])["uid"] == "evotok-serve"


def test_api_probes_http_by_default_grpc_health_when_asked(rendered_default: Rendered,
                                                           rendered_all: Rendered) -> None:
    http = rendered_default.find("Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
    assert http["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert http["livenessProbe"]["httpGet"]["path"] == "/healthz"
    grpc = rendered_all.find("Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
    assert grpc["readinessProbe"]["grpc"] == {"port": 8001}  # the standard health service, readiness
    assert grpc["livenessProbe"]["grpc"] == {"port": 8001, "service": "liveness"}
    assert "httpGet" not in grpc["readinessProbe"]


@pytest.mark.parametrize("fixture", ["rendered_default", "rendered_all"])
def test_pods_are_hardened(fixture: str, request: pytest.FixtureRequest) -> None:
    rendered: Rendered = request.getfixturevalue(fixture)
    for doc in rendered.docs():
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "resources" in c and c["livenessProbe"] and c["readinessProbe"]
            # the read-only root needs a writable /tmp
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])


def test_worker_gpu_probes_and_placement(rendered_default: Rendered, rendered_all: Rendered) -> None:
    worker = rendered_default.find("Deployment", "-worker")
    pod = worker["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60, "too short for an engine build"
    assert c["ports"][0]["containerPort"] == 9100
    # all-features: the metrics port follows worker.settings and the cache is a PVC at the overridden dir
    c_all = rendered_all.find("Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
    assert c_all["ports"][0]["containerPort"] == 9200
    assert c_all["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert {"name": "engine-cache", "mountPath": "/engines"} in c_all["volumeMounts"]
    assert "replicas" not in rendered_all.find("Deployment", "-worker")["spec"], "KEDA owns replicas"


def test_api_deployment_service_hpa(rendered_default: Rendered) -> None:
    api = rendered_default.find("Deployment", "-api")
    c = api["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["api"] and c["ports"][0]["containerPort"] == 8000
    assert c["image"] == "evotok-serve:0.1.0-cpu"
    hpa = rendered_default.find("HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["scaleTargetRef"]["name"] == api["metadata"]["name"]
    assert "replicas" not in api["spec"], "the HPA owns replicas"
    svc = rendered_default.find("Service", "-api")
    assert svc["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]


def test_api_gets_a_memory_dev_shm_only_for_the_inprocess_queue(rendered_default: Rendered) -> None:
    """`evotok serve` (queue: inprocess) hands payloads from its front ends to the runtime process in /dev/shm,
    which a pod otherwise gets at 64 MiB; with Redis the API needs none."""

    def pod(rendered: Rendered) -> dict[str, Any]:
        spec: dict[str, Any] = rendered.find("Deployment", "-api")["spec"]["template"]["spec"]
        return spec

    shm = {"name": "dshm", "mountPath": "/dev/shm"}
    assert shm not in pod(rendered_default)["containers"][0]["volumeMounts"]
    assert "dshm" not in {v["name"] for v in pod(rendered_default)["volumes"]}
    inprocess = pod(render_chart({"settings": {"queue": "inprocess"}}, "inprocess"))
    assert shm in inprocess["containers"][0]["volumeMounts"]
    dshm = next(v for v in inprocess["volumes"] if v["name"] == "dshm")
    assert dshm["emptyDir"]["medium"] == "Memory"


def test_selectors_match_pod_labels(rendered_all: Rendered) -> None:
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in rendered_all.docs()
        if d["kind"] in ("Deployment", "StatefulSet")
    }
    for doc in rendered_all.docs():
        if doc["kind"] in ("Service", "PodDisruptionBudget"):
            sel = doc["spec"]["selector"]
            sel = sel.get("matchLabels", sel)
            assert any(sel.items() <= labels.items() for labels in pods.values()), doc["metadata"]["name"]
        if doc["kind"] == "ServiceMonitor":
            sel = doc["spec"]["selector"]["matchLabels"]
            services = [d for d in rendered_all.docs() if d["kind"] == "Service"]
            matched = [s for s in services if sel.items() <= s["metadata"]["labels"].items()]
            assert len(matched) == 1
            ports = {p["name"] for p in matched[0]["spec"]["ports"]}
            assert doc["spec"]["endpoints"][0]["port"] in ports


def test_redis_statefulset_auth_and_persistence(rendered_default: Rendered) -> None:
    sts = rendered_default.find("StatefulSet", "-redis")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    script = " ".join(c["command"])
    for flag in (
        "--appendonly yes",
        "--appendfsync everysec",
        "--maxmemory-policy noeviction",
        "requirepass",
    ):
        assert flag in script
    assert {e["name"] for e in c["env"]} == {"REDIS_PASSWORD", "REDISCLI_AUTH"}
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_secret_keeps_secrets_out_of_configmaps(rendered_all: Rendered) -> None:
    import base64

    secret = rendered_all.find("Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["EVOTOK_REDIS_PASSWORD"] == "a-fixed-test-password"
    assert json.loads(data["EVOTOK_API_KEYS"]) == ["token-a", "token-b"]
    for cm in (
        d
        for d in rendered_all.docs()
        if d["kind"] == "ConfigMap" and "-dashboard" not in d["metadata"]["name"]
    ):
        assert "EVOTOK_REDIS_PASSWORD" not in cm["data"] and "EVOTOK_API_KEYS" not in cm["data"]
        assert "a-fixed-test-password" not in json.dumps(cm)


def test_existing_secret_renders_no_secret() -> None:
    rendered = render_chart({"existingSecret": "my-evotok"}, "existing-secret")
    assert "Secret" not in rendered.kinds()
    env_from = rendered.find("Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert {"secretRef": {"name": "my-evotok"}} in env_from


def test_external_redis_needs_a_url() -> None:
    with pytest.raises(helm_python.HelmError, match="redis_url"):
        render_chart({"redis": {"enabled": False}}, "external-no-url")
    rendered = render_chart(
        {
            "redis": {"enabled": False},
            "settings": {"redis_url": "rediss://cache.example:6380/2"},
            "keda": {"enabled": True},
        },
        "external",
    )
    assert "StatefulSet" not in rendered.kinds()
    assert rendered.find("ConfigMap", "-api")["data"]["EVOTOK_REDIS_URL"] == "rediss://cache.example:6380/2"
    meta = rendered.find("ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert (meta["address"], meta["databaseIndex"], meta["enableTLS"]) == ("cache.example:6380", "2", "true")


@pytest.mark.parametrize(
    "values",
    [
        {"settings": {"no_such_setting": 1}},
        {"settings": {"backend": "tvm"}},
        {"worker": {"settings": {"max_batch_size": 0}}},
        {"api": {"replicas": "two"}},
        {"worker": {"engineCache": {"type": "hostPath"}}},
    ],
    ids=["unknown-setting", "bad-enum", "below-minimum", "wrong-type", "bad-cache-type"],
)
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render_chart(values, "bad")


def test_notes_render(rendered_default: Rendered, rendered_all: Rendered) -> None:
    assert "port-forward svc/rel-evotok-api" in rendered_default.notes
    assert "WARNING: settings.api_keys is empty" in rendered_default.notes
    assert "WARNING" not in rendered_all.notes
    assert "KEDA 0-8 replicas" in rendered_all.notes


def test_keda_streams_match_the_service_protocol(rendered_all: Rendered) -> None:
    """The ScaledObject watches exactly the work streams and consumer group the workers use."""
    from evotok.service.batcher import OPS
    from evotok.service.redis_protocol import GROUP, Keys

    so = rendered_all.find("ScaledObject")
    prefix = all_features_values().get("settings", {}).get("redis_prefix", "evotok")
    keys = Keys(prefix)
    triggers = so["spec"]["triggers"]
    assert sorted(t["metadata"]["stream"] for t in triggers) == sorted(keys.work(op) for op in OPS)
    assert {t["metadata"]["consumerGroup"] for t in triggers} == {GROUP}
    assert all(t["type"] == "redis-streams" and "lagCount" in t["metadata"] for t in triggers)
    assert (
        so["spec"]["scaleTargetRef"]["name"] == rendered_all.find("Deployment", "-worker")["metadata"]["name"]
    )
    auth = rendered_all.find("TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"][0]["key"] == "EVOTOK_REDIS_PASSWORD"
    assert {t["authenticationRef"]["name"] for t in triggers} == {auth["metadata"]["name"]}
