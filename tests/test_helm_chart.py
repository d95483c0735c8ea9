"""The Helm chart (helm/cardq) and the Grafana dashboard (deploy/grafana).

The chart is rendered and linted by Helm's own engine: ``helm-python-sdk`` binds Helm's Go
SDK (a shared library inside the wheel) with ctypes, so no ``helm`` binary, cluster or
network is involved. Every rendered manifest of a built-in kind is validated against the
Kubernetes OpenAPI schemas that ``kubernetes-validate`` ships (strict: unknown fields are
errors). ServiceMonitor, PrometheusRule and ScaledObject are CRDs with no schema there:
their structure is asserted by hand.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import os
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from cardq import config as worker_config
from cardq.backends import REGISTRY
from tests.helpers import found

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "cardq"
DASHBOARD = ROOT / "deploy" / "grafana" / "cardq-dashboard.json"
RELEASE = "cardq"
NAMESPACE = "apps"
#: Kubernetes versions whose schemas every manifest must satisfy (oldest the chart
#: supports through Chart.yaml's kubeVersion, and a recent one).
KUBE_VERSIONS = ("1.25", "1.33")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
SECRET_NAME = "cardq-credentials"

#: Every metric the worker exports (worker/cardq/metrics.py), as PromQL names them.
COUNTERS = {
    "cardq_requests_consumed_total",
    "cardq_results_total",
    "cardq_retries_total",
    "cardq_token_fetches_total",
    "cardq_idempotency_hits_total",
    "cardq_dead_letters_total",
    "cardq_key_mismatches_total",
    "cardq_already_published_total",
    "cardq_unmarked_results_found_total",
    "cardq_store_errors_total",
}
HISTOGRAMS = {
    "cardq_send_duration_seconds",
    "cardq_end_to_end_seconds",
    "cardq_rate_limit_wait_seconds",
}
GAUGES = {
    "cardq_in_flight_sends",
    "cardq_buffered_records",
    "cardq_buffered_bytes",
    "cardq_paused_partitions",
    "cardq_consumer_lag",
    "cardq_ready",
    "cardq_jobs_waiting",
    "cardq_rate_limited_backlog",
}

REDIS = {"store": "redis", "redis_url": "redis://redis-master:6379/0"}

#: Every option switched on (KEDA variant; the HPA variant swaps keda for autoscaling).
ALL_ON: dict[str, Any] = {
    "replicaCount": 3,
    "existingSecret": SECRET_NAME,
    "secretEnv": {"enabled": True},
    "secretFiles": {"enabled": True},
    "staticMembership": True,
    "terminationGracePeriodSeconds": 40,
    "config": {
        "kafka": {
            "bootstrap_servers": "kafka-0.kafka:9093,kafka-1.kafka:9093",
            "group_id": "cardq-prod",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "cardq",
            "sasl_password": {"env": "KAFKA_PASSWORD"},
            "ssl_cafile": "/etc/cardq/secrets/ca.crt",
            "topics": {"requests": "cards.requests"},
        },
        "delivery": {"drain_grace_s": 25, "max_in_flight": 256},
        "idempotency": {**REDIS, "redis_password": {"file": "/etc/cardq/secrets/redis-password"}},
        "observability": {"log_level": "debug"},
        "bots": {
            "ops-alerts": {
                "backend": "feishu_webhook",
                "credentials": {
                    "token": {"env": "OPS_ALERTS_TOKEN"},
                    "secret": {"env": "OPS_ALERTS_SECRET"},
                },
            },
            "ops-app": {
                "backend": "feishu_message",
                "base_url": "https://open.larksuite.com",
                "app_id": "cli_a1b2c3",
                "credentials": {"app_secret": {"file": "/etc/cardq/secrets/ops-app-secret"}},
            },
        },
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
    "keda": {"enabled": True, "triggerType": "prometheus", "maxReplicaCount": 6},
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
        }
    ],
    "extraEnv": [{"name": "CARDQ_DELIVERY__MAX_ATTEMPTS", "value": "6"}],
}
ALL_ON_HPA: dict[str, Any] = {
    **ALL_ON,
    "keda": {"enabled": False},
    "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
}
ALL_ON_KAFKA_SCALER: dict[str, Any] = {
    **ALL_ON,
    "keda": {"enabled": True, "triggerType": "kafka", "kafka": {"authenticationRef": "kafka"}},
}
#: Rolling deploys: a StatefulSet of static members, the sticky assignor.
ALL_ON_STATEFULSET: dict[str, Any] = {
    **ALL_ON,
    "workload": "StatefulSet",
    "partitionAssignmentStrategy": "sticky",
}
VARIANTS = {
    "default": {},
    "all-on-statefulset": ALL_ON_STATEFULSET,
    "all-on-keda-prometheus": ALL_ON,
    "all-on-keda-kafka": ALL_ON_KAFKA_SCALER,
    "all-on-hpa": ALL_ON_HPA,
}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Render with Helm's engine; every non-empty YAML document of every template."""
    files = chart.render(copy.deepcopy(values or {}), name=RELEASE, namespace=NAMESPACE)
    docs = []
    for name, text in sorted(files.items()):
        if not name.endswith((".yaml", ".yml")):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    return found


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = workload(docs)["spec"]["template"]["spec"]
    return spec


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = pod_spec(docs)["containers"]
    return dict(c)


def rendered_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])
    return cfg


def env_by_name(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def metric_names(expr: str) -> set[str]:
    """The cardq_ series an expression reads, histogram suffixes folded."""
    names = set()
    for name in re.findall(r"\bcardq_[a-z0-9_]+", expr):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def assert_known_metrics(expr: str) -> None:
    unknown = metric_names(expr) - COUNTERS - HISTOGRAMS - GAUGES
    assert not unknown, f"unknown metrics {sorted(unknown)} in {expr!r}"


# --------------------------------------------------------------------------- lint, render


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_is_clean(variant: str) -> None:
    report = helm.lint(CHART, copy.deepcopy(VARIANTS[variant]), strict=True, kube_version="v1.33.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_chart_metadata(chart: helm.Chart) -> None:
    meta = chart.metadata
    assert meta["name"] == "cardq"
    assert meta["apiVersion"] == "v2"
    assert chart.schema is not None, "values.schema.json is part of the chart"


def test_default_render(chart: helm.Chart) -> None:
    docs = render(chart)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    )
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    c = container(docs)
    assert c["args"] == ["run", "--config", "/etc/cardq/config.yaml"]
    assert env_by_name(c)["CARDQ_CONFIG"]["value"] == "/etc/cardq/config.yaml"
    assert "envFrom" not in c
    assert "CARDQ_KAFKA__GROUP_INSTANCE_ID" not in env_by_name(c)
    config = rendered_config(docs)
    assert config["idempotency"]["store"] == "memory"
    assert config["observability"] == {
        "port": 9464,
        "host": "0.0.0.0",
        "log_format": "json",
        "log_level": "info",
    }


@pytest.mark.parametrize("variant", ["all-on-keda-prometheus", "all-on-hpa"])
def test_render_with_every_option(chart: helm.Chart, variant: str) -> None:
    docs = render(chart, VARIANTS[variant])
    kinds = {d["kind"] for d in docs}
    expected = {
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceAccount",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
    }
    expected.add("ScaledObject" if "keda" in variant else "HorizontalPodAutoscaler")
    assert kinds == expected
    assert "Secret" not in kinds, "the chart never creates credentials"
    # The autoscaler owns the replica count.
    assert "replicas" not in one(docs, "Deployment")["spec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_match_kubernetes_schemas(chart: helm.Chart, variant: str) -> None:
    docs = render(chart, VARIANTS[variant])
    checked = 0
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            # CRDs have no schema in kubernetes-validate: asserted by hand below.
            with pytest.raises(SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 5


# --------------------------------------------------------------------------- pod spec


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_use_the_metrics_port(chart: helm.Chart, variant: str) -> None:
    docs = render(chart, VARIANTS[variant])
    c = container(docs)
    (port,) = c["ports"]
    assert port == {"name": "metrics", "containerPort": 9464, "protocol": "TCP"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["periodSeconds"] >= 1
        assert c[probe]["failureThreshold"] >= 1
    (service,) = [d for d in docs if d["kind"] == "Service" and "clusterIP" not in d["spec"]]
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}
    ]
    labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert rendered_config(docs)["observability"]["port"] == 9464


def test_service_port_is_the_worker_port(chart: helm.Chart) -> None:
    docs = render(chart, {"service": {"port": 9500}})
    assert rendered_config(docs)["observability"]["port"] == 9500
    assert container(docs)["ports"][0]["containerPort"] == 9500
    assert one(docs, "Service")["spec"]["ports"][0]["port"] == 9500
    with pytest.raises(helm.HelmRenderError, match=r"set service\.port instead"):
        render(chart, {"config": {"observability": {"port": 9000}}})


@pytest.mark.parametrize("variant", VARIANTS)
def test_grace_period_outlasts_the_drain(chart: helm.Chart, variant: str) -> None:
    docs = render(chart, VARIANTS[variant])
    drain = rendered_config(docs)["delivery"]["drain_grace_s"]
    assert pod_spec(docs)["terminationGracePeriodSeconds"] > drain
    if variant == "default":
        assert drain == worker_config.DeliverySettings().drain_grace_s == 20
        assert pod_spec(docs)["terminationGracePeriodSeconds"] == 30


@pytest.mark.parametrize(
    "values",
    [
        {"terminationGracePeriodSeconds": 20},
        {"config": {"delivery": {"drain_grace_s": 45}}},
        {"terminationGracePeriodSeconds": 25, "config": {"delivery": {"drain_grace_s": 25.5}}},
    ],
)
def test_grace_period_not_longer_than_drain_fails(
    chart: helm.Chart, values: dict[str, Any]
) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"must be longer than config\.delivery"):
        render(chart, values)


def test_drain_grace_may_be_fractional(chart: helm.Chart) -> None:
    docs = render(chart, {"config": {"delivery": {"drain_grace_s": 29.5}}})
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 30


@pytest.mark.parametrize("variant", VARIANTS)
def test_restricted_security_context(chart: helm.Chart, variant: str) -> None:
    docs = render(chart, VARIANTS[variant])
    pod = pod_spec(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The read-only root needs a writable /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    config_mount = next(
        m for m in container(docs)["volumeMounts"] if m["mountPath"] == "/etc/cardq/config.yaml"
    )
    assert config_mount["readOnly"] is True
    assert config_mount["subPath"] == "config.yaml"
    assert (
        volumes[config_mount["name"]]["configMap"]["name"]
        == one(docs, "ConfigMap")["metadata"]["name"]
    )
    resources = container(docs)["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


# --------------------------------------------------------------------------- config check


def init_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = pod_spec(docs)["initContainers"]
    return dict(c)


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_init_container_checks_the_configuration(chart: helm.Chart, variant: str) -> None:
    """`cardq run --check` before the worker, seeing exactly what the worker will see."""
    docs = render(chart, VARIANTS[variant])
    check, worker = init_container(docs), container(docs)
    assert check["name"] == "config-check"
    assert check["args"] == ["run", "--check", "--config", "/etc/cardq/config.yaml"]
    assert check["image"] == worker["image"]
    assert worker["args"] == ["run", "--config", "/etc/cardq/config.yaml"]
    for key in ("env", "envFrom", "volumeMounts", "securityContext"):
        assert check.get(key) == worker.get(key), key
    assert {"cpu", "memory"} <= check["resources"]["requests"].keys()


def test_the_config_check_can_be_switched_off(chart: helm.Chart) -> None:
    docs = render(chart, {"configCheck": {"enabled": False}})
    assert "initContainers" not in pod_spec(docs)


@pytest.mark.parametrize("enabled", [True, False])
def test_install_notes_say_where_the_check_reports(chart: helm.Chart, enabled: bool) -> None:
    files = chart.render({"configCheck": {"enabled": enabled}}, name=RELEASE, namespace=NAMESPACE)
    (notes,) = [text for name, text in files.items() if name.endswith("NOTES.txt")]
    assert (f"kubectl -n {NAMESPACE} logs POD -c config-check" in notes) is enabled


EXAMPLES = found(CHART / "examples", "*.yaml")


def _run_the_config_check(
    docs: list[dict[str, Any]],
    tmp_path: Path,
    secret_lacks: str = "",
) -> tuple[int, str]:
    """Run the init container's command here: its arguments, the rendered ConfigMap, the
    pod's variables (Secret values made up, except a key ``secret_lacks``) and every
    mounted Secret as a directory of made-up files. Returns the exit code and the output."""
    from cardq.cli import main

    check = init_container(docs)
    text = one(docs, "ConfigMap")["data"]["config.yaml"]
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    for mount in check["volumeMounts"]:
        if "secret" in volumes[mount["name"]]:
            local = tmp_path / mount["name"]
            local.mkdir()
            text = text.replace(mount["mountPath"], str(local))
            for ref in re.findall(re.escape(str(local)) + r"/[\w.-]+", text):
                Path(ref).write_text("made-up-secret\n", encoding="utf-8")
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    # The pod's environment, given to the check as a mapping (the test's own is untouched).
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDQ_")}
    for e in check["env"]:
        env[e["name"]] = e.get("value", "made-up-pod-value")
    if check.get("envFrom"):  # the keys the user puts in existingSecret: what {env:} names
        for name in re.findall(r"env: (\w+)", text):
            if name not in env and name != secret_lacks:
                env[name] = "made-up-secret"
    args = check["args"]
    args[args.index("--config") + 1] = str(path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(args, env=env)
    return code, out.getvalue()


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_example_values_install_and_pass_the_config_check(
    chart: helm.Chart, example: Path, tmp_path: Path
) -> None:
    values = yaml.safe_load(example.read_text(encoding="utf-8"))
    chart.validate_schema(copy.deepcopy(values))
    report = helm.lint(CHART, copy.deepcopy(values), strict=True, kube_version="v1.33.0")
    assert report["errors"] == []
    docs = render(chart, values)
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
    code, out = _run_the_config_check(docs, tmp_path)
    assert code == 0, out
    assert "kafka.sasl_password" in out  # the broker's password was read too
    assert "security=SASL_" in out


def test_the_config_check_stops_on_a_missing_secret_key(chart: helm.Chart, tmp_path: Path) -> None:
    """A Secret without the key a bot refers to: the init container fails, naming both."""
    values = yaml.safe_load((CHART / "examples/kafka-secret-as-env.yaml").read_text())
    values["config"]["bots"]["ops-app"] = {
        "backend": "feishu_message",
        "app_id": "cli_x",
        "credentials": {"app_secret": {"env": "OPS_APP_SECRET"}},
    }
    docs = render(chart, values)
    text = one(docs, "ConfigMap")["data"]["config.yaml"]
    assert "OPS_APP_SECRET" in text
    code, out = _run_the_config_check(docs, tmp_path, secret_lacks="OPS_APP_SECRET")
    assert code == 2
    assert "bots.ops-app.credentials.app_secret: environment variable OPS_APP_SECRET" in out


# --------------------------------------------------------------------------- credentials


def test_existing_secret_as_env_and_files(chart: helm.Chart) -> None:
    docs = render(chart, ALL_ON)
    c = container(docs)
    assert c["envFrom"] == [{"secretRef": {"name": SECRET_NAME}}]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/cardq/secrets")
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == SECRET_NAME
    assert volume["secret"]["defaultMode"] == 0o440
    # The configuration refers to credentials and never holds one.
    config = rendered_config(docs)
    assert config["kafka"]["sasl_password"] == {"env": "KAFKA_PASSWORD"}
    assert config["idempotency"]["redis_password"] == {"file": "/etc/cardq/secrets/redis-password"}
    for bot in config["bots"].values():
        for ref in bot["credentials"].values():
            assert ref.keys() in ({"env"}, {"file"})
            if "file" in ref:
                assert ref["file"].startswith("/etc/cardq/secrets/")


def test_existing_secret_as_env_only(chart: helm.Chart) -> None:
    docs = render(chart, {"existingSecret": SECRET_NAME})
    c = container(docs)
    assert c["envFrom"] == [{"secretRef": {"name": SECRET_NAME}}]
    assert all(m["mountPath"] != "/etc/cardq/secrets" for m in c["volumeMounts"])
    assert all("secret" not in v for v in pod_spec(docs)["volumes"])


def test_existing_secret_as_files_only(chart: helm.Chart) -> None:
    values = {
        "existingSecret": SECRET_NAME,
        "secretEnv": {"enabled": False},
        "secretFiles": {"enabled": True, "items": [{"key": "app-secret", "path": "app"}]},
    }
    docs = render(chart, values)
    c = container(docs)
    assert "envFrom" not in c
    (volume,) = [v for v in pod_spec(docs)["volumes"] if "secret" in v]
    assert volume["secret"]["items"] == [{"key": "app-secret", "path": "app"}]


def test_secret_files_need_a_secret(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"secretFiles\.enabled needs existingSecret"):
        render(chart, {"secretFiles": {"enabled": True}})


# --------------------------------------------------------------------------- config


def test_config_checksum_rolls_the_pods(chart: helm.Chart) -> None:
    files = chart.render({}, name=RELEASE, namespace=NAMESPACE)
    deployment = yaml.safe_load(files["cardq/templates/deployment.yaml"])
    checksum = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum == hashlib.sha256(files["cardq/templates/configmap.yaml"].encode()).hexdigest()

    def checksum_of(values: dict[str, Any]) -> str:
        annotations = one(render(chart, values), "Deployment")["spec"]["template"]["metadata"][
            "annotations"
        ]
        return str(annotations["checksum/config"])

    assert checksum_of({}) == checksum
    assert checksum_of({"config": {"delivery": {"max_in_flight": 64}}}) != checksum
    # Not a config change: the pods are not rolled for it.
    assert checksum_of({"resources": {"limits": {"memory": "1Gi"}}}) == checksum


def test_config_is_merged_over_the_defaults(chart: helm.Chart) -> None:
    config = rendered_config(render(chart, {"config": {"kafka": {"group_id": "other"}}}))
    assert config["kafka"]["group_id"] == "other"
    assert config["kafka"]["bootstrap_servers"] == "kafka:9092"
    assert config["kafka"]["topics"]["requests"] == "cardq.requests"
    assert config["delivery"]["drain_grace_s"] == 20


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_config_loads_in_the_worker(
    chart: helm.Chart, variant: str, tmp_path: Path
) -> None:
    """The ConfigMap is a configuration the worker accepts, with the pod's env applied."""
    docs = render(chart, VARIANTS[variant])
    path = tmp_path / "config.yaml"
    path.write_text(one(docs, "ConfigMap")["data"]["config.yaml"], encoding="utf-8")
    c = container(docs)
    env = {e["name"]: e.get("value", "cardq-7c9d8f-x2x4k") for e in c["env"]}
    settings = worker_config.load(path, env=env)
    assert settings.observability.port == 9464
    assert settings.observability.log_format == "json"
    assert settings.worker_id == "cardq-7c9d8f-x2x4k"
    if VARIANTS[variant].get("staticMembership"):
        assert settings.kafka.group_instance_id == "cardq-7c9d8f-x2x4k"
        assert settings.delivery.max_attempts == 6
        assert settings.idempotency.store == "redis"
        assert set(settings.bots) == {"ops-alerts", "ops-app"}
    else:
        assert settings.kafka.group_instance_id is None


def test_static_membership_uses_the_pod_name(chart: helm.Chart) -> None:
    env = env_by_name(container(render(chart, {"staticMembership": True})))
    assert env["CARDQ_KAFKA__GROUP_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }


# --------------------------------------------------------------------------- scaling


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 2},
        {"autoscaling": {"enabled": True}},
        {"keda": {"enabled": True}},
        {"replicaCount": 3, "config": {"idempotency": {"store": "memory"}}},
    ],
)
def test_memory_store_with_several_replicas_fails(
    chart: helm.Chart, values: dict[str, Any]
) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"config\.idempotency\.store=redis"):
        render(chart, values)


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 2, "config": {"idempotency": REDIS}},
        {"autoscaling": {"enabled": True}, "config": {"idempotency": REDIS}},
        {"keda": {"enabled": True, "maxReplicaCount": 1}},
        {"autoscaling": {"enabled": True, "maxReplicas": 1}},
    ],
)
def test_several_replicas_with_redis_render(chart: helm.Chart, values: dict[str, Any]) -> None:
    assert one(render(chart, values), "Deployment")


def test_hpa_and_keda_are_exclusive(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="mutually exclusive"):
        render(chart, {**ALL_ON, "autoscaling": {"enabled": True}})


def test_pdb_selects_the_pods(chart: helm.Chart) -> None:
    docs = render(chart)
    pdb = one(docs, "PodDisruptionBudget")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    pdb = one(
        render(chart, {"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": None}}),
        "PodDisruptionBudget",
    )
    assert pdb["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in pdb["spec"]
    with pytest.raises(helm.HelmRenderError, match="only one of minAvailable"):
        render(chart, {"podDisruptionBudget": {"minAvailable": 1}})
    assert all(
        d["kind"] != "PodDisruptionBudget"
        for d in render(chart, {"podDisruptionBudget": {"enabled": False}})
    )


def test_hpa(chart: helm.Chart) -> None:
    docs = render(chart, ALL_ON_HPA)
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": one(docs, "Deployment")["metadata"]["name"],
    }
    resources = {m["resource"]["name"] for m in hpa["spec"]["metrics"]}
    assert resources == {"cpu", "memory"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_keda_prometheus_trigger(chart: helm.Chart) -> None:
    docs = render(chart, ALL_ON)
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert scaled["spec"]["maxReplicaCount"] == 6
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    sel = 'job="cardq",namespace="apps"'
    # Lag that only rate limits explain is left out: more pods cannot speed a 5/s chat.
    assert query == (
        f"clamp_min(sum(cardq_consumer_lag{{{sel}}})"
        f" - (sum(cardq_rate_limited_backlog{{{sel}}}) or vector(0)), 0)"
    )
    assert_known_metrics(query)
    assert trigger["metadata"]["threshold"] == "1000"
    assert all(isinstance(v, str) for v in trigger["metadata"].values())


def test_keda_kafka_trigger_defaults_to_the_worker_config(chart: helm.Chart) -> None:
    scaled = one(render(chart, ALL_ON_KAFKA_SCALER), "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["bootstrapServers"] == "kafka-0.kafka:9093,kafka-1.kafka:9093"
    assert trigger["metadata"]["consumerGroup"] == "cardq-prod"
    assert trigger["metadata"]["topic"] == "cards.requests"
    assert trigger["authenticationRef"] == {"name": "kafka"}
    assert all(isinstance(v, str) for v in trigger["metadata"].values())


# --------------------------------------------------------------------------- monitoring


def test_service_monitor(chart: helm.Chart) -> None:
    docs = render(chart, ALL_ON)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(docs, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def test_prometheus_rule_alerts(chart: helm.Chart) -> None:
    rule = one(render(chart, ALL_ON), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    alerts = {r["alert"]: r for r in rules}
    assert set(alerts) == {
        "CardqConsumerLagGrowing",
        "CardqDeadLetters",
        "CardqSustainedThrottling",
        "CardqNoResults",
    }
    expected_metric = {
        "CardqConsumerLagGrowing": "cardq_consumer_lag",
        "CardqDeadLetters": "cardq_dead_letters_total",
        "CardqSustainedThrottling": "cardq_retries_total",
        "CardqNoResults": "cardq_results_total",
    }
    for name, alert in alerts.items():
        assert_known_metrics(alert["expr"])
        assert expected_metric[name] in metric_names(alert["expr"])
        assert 'job="cardq",namespace="apps"' in alert["expr"]
        assert re.fullmatch(r"[0-9]+[smh]", alert["for"])
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}
        annotations = alert["annotations"]
        assert annotations["summary"]
        assert annotations["description"]
        assert annotations["runbook"] == f"https://github.com/cardq/cardq#alert-{name.lower()}"
    assert 'reason="throttled"' in alerts["CardqSustainedThrottling"]["expr"]


def test_prometheus_rule_alerts_can_be_switched_off(chart: helm.Chart) -> None:
    values = {
        "prometheusRule": {
            "enabled": True,
            "alerts": {"deadLetters": {"enabled": False}},
            "additionalRules": [{"alert": "CardqNotReady", "expr": "min(cardq_ready) == 0"}],
        }
    }
    rule = one(render(chart, values), "PrometheusRule")
    names = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "CardqDeadLetters" not in names
    assert "CardqNotReady" in names


# --------------------------------------------------------------------------- values schema


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"terminationGracePeriodSeconds": "thirty"}, "/terminationGracePeriodSeconds"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"replicas": 3}, "replicas"),
        ({"config": {"idempotency": {"store": "postgres"}}}, "/config/idempotency/store"),
        ({"config": {"kafka": {"sasl_password": "hunter2"}}}, "/config/kafka/sasl_password"),
        (
            {
                "config": {
                    "bots": {"b": {"backend": "feishu_webhook", "credentials": {"token": "t"}}}
                }
            },
            "/config/bots/b/credentials/token",
        ),
        (
            {"config": {"bots": {"b": {"backend": "slack", "credentials": {}}}}},
            "/config/bots/b/backend",
        ),
        ({"config": {"kafak": {}}}, "kafak"),
        # misspelt keys in every section fail `helm install`, not the pod
        ({"config": {"delivery": {"max_atempts": 3}}}, "max_atempts"),
        ({"config": {"kafka": {"bootstrap_server": "k:9092"}}}, "bootstrap_server"),
        ({"config": {"idempotency": {"redis_ulr": "redis://r"}}}, "redis_ulr"),
        ({"config": {"http": {"timeout": 5}}}, "timeout"),
        ({"config": {"observability": {"log_levle": "debug"}}}, "log_levle"),
        (
            {
                "config": {
                    "bots": {"b": {"backend": "feishu_webhook", "limits": {"destinaton": []}}}
                }
            },
            "destinaton",
        ),
        (
            {
                "config": {
                    "bots": {
                        "b": {
                            "backend": "feishu_webhook",
                            "limits": {"destination": [{"limit": 0, "seconds": 1}]},
                        }
                    }
                }
            },
            "/config/bots/b/limits/destination",
        ),
        ({"config": {"http": {"timeout_s": -1}}}, "/config/http/timeout_s"),
        ({"service": {"port": 70000}}, "/service/port"),
        ({"keda": {"triggerType": "cpu"}}, "/keda/triggerType"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ],
)
def test_values_schema_rejects_bad_values(
    chart: helm.Chart, values: dict[str, Any], where: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(copy.deepcopy(values))
    # helm install/template apply the same schema before rendering.
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


@pytest.mark.parametrize("variant", VARIANTS)
def test_values_schema_accepts_the_variants(chart: helm.Chart, variant: str) -> None:
    chart.validate_schema(copy.deepcopy(VARIANTS[variant]))


def _schema_keys(schema: dict[str, Any], tp: Any, where: str) -> None:
    """The schema names exactly the keys of worker/cardq/config.py, recursively, and refuses any
    other: a misspelt key fails `helm install`, and a key the worker gains must be added
    here (this test says which)."""
    fields = {f.name: f for f in dataclasses.fields(tp)}
    hints = typing.get_type_hints(tp)
    named = set(schema.get("properties", {}))
    assert named == set(fields), (
        f"values.schema.json at {where}: missing {sorted(set(fields) - named)}, "
        f"unknown to the worker {sorted(named - set(fields))}"
    )
    assert schema.get("additionalProperties") is False, f"{where} accepts any key"
    for key, sub in schema.get("properties", {}).items():
        inner = hints[key]
        args = [a for a in typing.get_args(inner) if a is not type(None)]
        if args and dataclasses.is_dataclass(args[0]):
            inner = args[0]
        if dataclasses.is_dataclass(inner) and inner is not worker_config.SecretRef:
            _schema_keys(sub, inner, f"{where}.{key}")


def test_values_schema_config_matches_the_worker() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    config_schema = schema["properties"]["config"]
    _schema_keys(config_schema, worker_config.Settings, "config")
    sections = {f.name for f in dataclasses.fields(worker_config.Settings)}
    assert set(config_schema["properties"]) == sections
    bot = config_schema["properties"]["bots"]["additionalProperties"]
    _schema_keys(bot, worker_config.BotSettings, "config.bots.*")
    assert set(bot["properties"]["backend"]["enum"]) == set(REGISTRY)
    descriptions = [backend.description for backend in REGISTRY.values()]
    creds = {c for d in descriptions for c in d.credentials + d.optional_credentials}
    assert set(bot["properties"]["credentials"]["propertyNames"]["enum"]) == creds


@pytest.mark.parametrize(
    ("key", "minimum", "inclusive"),
    worker_config._BOUNDS,
    ids=[bound[0] for bound in worker_config._BOUNDS],
)
def test_values_schema_refuses_what_the_worker_refuses(
    chart: helm.Chart, key: str, minimum: float, inclusive: bool
) -> None:
    """Each range the worker checks at load is checked by `helm install` already."""
    section, name = key.split(".")
    bad = minimum - 1 if inclusive else minimum
    with pytest.raises(helm.HelmValuesError, match=re.escape(f"/config/{section}/{name}")):
        chart.validate_schema({"config": {section: {name: bad}}})
    with pytest.raises(worker_config.ConfigError):
        worker_config.from_mapping({section: {name: bad}}, env={})
    good = minimum if inclusive else minimum + 1
    if key == "delivery.backoff_base_s":
        good = 0.5  # must also stay below backoff_cap_s
    chart.validate_schema({"config": {section: {name: good}}})


def test_values_schema_wants_a_token_for_console_actions(chart: helm.Chart) -> None:
    """As the worker does: actions without a token, or with a literal one, are refused."""
    for console in ({"actions": True}, {"actions": True, "token": "literal"}):
        with pytest.raises(helm.HelmValuesError, match="console"):
            chart.validate_schema({"config": {"observability": {"console": console}}})
        with pytest.raises(worker_config.ConfigError):
            worker_config.from_mapping({"observability": {"console": console}}, env={})
    good = {"actions": True, "token": {"env": "CONSOLE_TOKEN"}}
    chart.validate_schema({"config": {"observability": {"console": good}}})
    chart.validate_schema({"config": {"observability": {"console": {"enabled": False}}}})


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    # The key itself, quoted whole or as the head of a path (`image.tag`): a bare prefix
    # match let `image` pass on `imagePullSecrets` alone.
    missing = [k for k in values if not re.search(rf"`{re.escape(k)}[`.\[: ]", readme)]
    assert not missing, f"helm/cardq/README.md does not document {missing}"


# --------------------------------------------------------------------------- dashboard


def test_grafana_dashboard_queries_known_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"]
    assert dashboard["title"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert exprs
    queried: set[str] = set()
    for expr in exprs:
        assert_known_metrics(expr)
        queried |= metric_names(expr)
    # Every metric the worker exports is on the dashboard.
    assert queried == COUNTERS | HISTOGRAMS | GAUGES
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in (
        "throughput by status",
        "backend / bot",
        "send latency p50 / p99",
        "end-to-end",
        "retries by reason",
        "throttled",
        "lag per partition",
        "in-flight",
        "paused partitions",
        "dead letters",
        "token fetches",
    ):
        assert topic in titles, topic
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= variables


# --------------------------------------------------------------------------- rolling deploys


def test_statefulset_of_static_members(chart: helm.Chart, tmp_path: Path) -> None:
    """Stable pod names as group.instance.ids, a session timeout that covers a restart,
    the sticky assignor; the autoscalers and the PDB point at the StatefulSet."""
    docs = render(chart, ALL_ON_STATEFULSET)
    assert all(d["kind"] != "Deployment" for d in docs)
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    headless = [d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    assert [h["metadata"]["name"] for h in headless] == [sts["spec"]["serviceName"]]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert headless[0]["spec"]["selector"].items() <= labels.items()
    env = env_by_name(container(docs))
    assert env["CARDQ_KAFKA__GROUP_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    path = tmp_path / "config.yaml"
    path.write_text(one(docs, "ConfigMap")["data"]["config.yaml"], encoding="utf-8")
    settings = worker_config.load(path, env={e: "cardq-1" for e in env if e.endswith("_ID")})
    assert settings.kafka.group_instance_id == "cardq-1"
    assert settings.kafka.session_timeout_ms == 120_000
    assert settings.kafka.partition_assignment_strategy == "sticky"
    scaled = one(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    hpa = one(render(chart, {**ALL_ON_HPA, "workload": "StatefulSet"}), "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"


def test_statefulset_keeps_an_explicit_session_timeout(chart: helm.Chart) -> None:
    values = copy.deepcopy(ALL_ON_STATEFULSET)
    values["config"]["kafka"]["session_timeout_ms"] = 30_000
    assert rendered_config(render(chart, values))["kafka"]["session_timeout_ms"] == 30_000
    # Without static membership the chart leaves the timeout alone.
    plain = rendered_config(render(chart, {**ALL_ON_STATEFULSET, "staticMembership": False}))
    assert "session_timeout_ms" not in plain["kafka"]


def test_deployment_by_default_without_assignor(chart: helm.Chart) -> None:
    docs = render(chart)
    assert one(docs, "Deployment") and all(d["kind"] != "StatefulSet" for d in docs)
    assert "partition_assignment_strategy" not in rendered_config(docs)["kafka"]


def test_unknown_workload_fails(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError, match="workload"):
        render(chart, {"workload": "DaemonSet"})
