"""deploy/: the Grafana dashboard queries only metrics the services export, and the Kubernetes
manifests probe paths the services serve, on the ports their settings give them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.api.app import build_app as build_api
from services.fetcher.app import build_asgi as build_fetcher
from services.fetcher.app import build_service as fetcher_service
from services.syncer.app import build_asgi as build_syncer
from services.syncer.app import build_service as syncer_service
from services.tracker.app import build_app as build_tracker
from shared.metrics import metric_names
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
K8S = [
    doc
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc
]
METRIC = re.compile(r"\b((?:woosync|faststream)_[a-z0-9_]+)")


def exported_metrics() -> set[str]:
    settings = Settings(namespace="deploy-test")
    registries = [
        build_api(settings).state.runtime.registry,
        build_tracker(settings).state.runtime.registry,
        fetcher_service(settings)[1].registry,
        syncer_service(settings)[1].registry,
    ]
    return set().union(*(metric_names(r) for r in registries))


def served_paths() -> dict[str, set[str]]:
    settings = Settings(namespace="deploy-test")
    return {
        "api": {route.path for route in build_api(settings).routes},
        "tracker": {route.path for route in build_tracker(settings).routes},
        "fetcher": {path for path, _ in build_fetcher(settings).routes},
        "syncer": {path for path, _ in build_syncer(settings).routes},
    }


def test_every_dashboard_query_names_exported_metrics() -> None:
    exported = exported_metrics()
    exprs = [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    named = {name for expr in exprs for name in METRIC.findall(expr)}
    assert named, exprs
    assert named <= exported, f"not exported: {sorted(named - exported)}"


def test_the_dashboard_covers_every_figure_the_issue_asks_for() -> None:
    text = json.dumps(DASHBOARD)
    for name in (
        "woosync_jobs",
        "woosync_customers_synced_total",
        "woosync_customers_failed_total",
        "woosync_store_page_duration_seconds_bucket",
        "woosync_store_page_errors_total",
        "woosync_retries_total",
        'woosync_queue_messages{role=\\"parking\\"}',
        'woosync_queue_messages{role=\\"work\\"}',
        "woosync_http_request_duration_seconds_bucket",
    ):
        assert name in text, name


def test_the_metric_name_check_can_fail() -> None:
    assert "woosync_no_such_metric_total" not in exported_metrics()


def _deployments() -> dict[str, dict[str, Any]]:
    found = {}
    for doc in K8S:
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            module = container["command"][2]
            found[module.removeprefix("services.")] = doc
    return found


def test_there_is_a_deployment_and_a_service_for_each_service() -> None:
    assert set(_deployments()) == {"api", "tracker", "fetcher", "syncer"}
    services = {doc["metadata"]["name"] for doc in K8S if doc["kind"] == "Service"}
    assert services == {f"woosync-{name}" for name in ("api", "tracker", "fetcher", "syncer")}
    assert _deployments()["syncer"]["spec"]["replicas"] >= 2
    assert _deployments()["fetcher"]["spec"]["replicas"] >= 2


@pytest.mark.parametrize("service", ["api", "tracker", "fetcher", "syncer"])
def test_probes_ask_paths_the_service_serves_on_its_port(service: str) -> None:
    deployment = _deployments()[service]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    paths = served_paths()[service]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in paths, (service, probe)
        assert container[probe]["httpGet"]["port"] == "http"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] in paths
    assert "/metrics" in paths
    config = next(doc for doc in K8S if doc["kind"] == "ConfigMap")["data"]
    port = int(config[f"WOOSYNC_{service.upper()}_PORT"])
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == port
    assert config[f"WOOSYNC_{service.upper()}_HOST"] == "0.0.0.0"
    refs = [ref for entry in container["envFrom"] for ref in entry.values()]
    assert {"name": "woosync-owner"} not in refs, "a service must not hold the owner's URL"


def test_the_migration_job_runs_migrate_as_the_owner() -> None:
    job = next(doc for doc in K8S if doc["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["woosync", "migrate"]
    assert {"secretRef": {"name": "woosync-owner"}} in container["envFrom"]


def test_every_configured_setting_exists() -> None:
    fields = {f"WOOSYNC_{name.upper()}" for name in Settings.model_fields}
    for doc in K8S:
        if doc["kind"] in ("ConfigMap", "Secret"):
            values = doc.get("data") or doc.get("stringData") or {}
            assert set(values) <= fields, set(values) - fields
