"""Prometheus config, alert rules and the Grafana dashboard refer to metrics the service really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from evotok.service.settings import Settings
from tests.deploy.deploy_helpers import CHART, REPO, Rendered, render_chart

MON = REPO / "deploy" / "monitoring"
DASHBOARD = MON / "grafana" / "dashboards" / "evotok.json"
_METRIC = re.compile(r"\bevotok_[a-z0-9_]+\b")
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def _service_metric_names() -> set[str]:
    """Metric names declared in the service code (string literals), as exposed by prometheus_client."""
    names: set[str] = set()
    for path in (REPO / "service").rglob("*.py"):
        for name in re.findall(r"[\"'](evotok_[a-z0-9_]+)[\"']", path.read_text(encoding="utf-8")):
            names.add(name.removesuffix("_total"))
    return names


def _base(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _exprs_in_rules(groups: list[dict[str, Any]]) -> list[str]:
    return [r["expr"] for g in groups for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_service_declares_metrics() -> None:
    assert {
        "evotok_http_requests",
        "evotok_queue_oldest_age_seconds",
        "evotok_worker_ready",
    } <= _service_metric_names()


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_referenced_metrics_exist_in_service(source: str) -> None:
    groups = yaml.safe_load((MON / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    exprs = _exprs_in_rules(groups) if source == "alerts" else _dashboard_exprs()
    known = _service_metric_names()
    used = {_base(m) for e in exprs for m in _METRIC.findall(e)}
    assert used, "no metrics found"
    assert sorted(used - known) == [], f"{source} uses metrics the service does not export"


def test_promql_parentheses_balance() -> None:
    groups = yaml.safe_load((MON / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    for expr in _exprs_in_rules(groups) + _dashboard_exprs():
        depth = 0
        for ch in expr:
            depth += {"(": 1, ")": -1}.get(ch, 0)
            assert depth >= 0, expr
        assert depth == 0, expr


def test_alerts_cover_the_required_signals() -> None:
    groups = yaml.safe_load((MON / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    alerts = {r["alert"]: r["expr"] for g in groups for r in g["rules"] if "alert" in r}
    required = {
        "evotok_queue_oldest_age_seconds": "oldest queue age",
        "evotok_admission_rejections_total": "rejection ratio",
        "evotok_worker_ready": "worker readiness",
        "evotok_dead_letters_total": "dead letters",
        "evotok_code_agreement_ratio": "code agreement",
    }
    for metric, what in required.items():
        assert any(metric in e for e in alerts.values()), f"no alert on {what}"
    # oldest age alert at half the default request deadline (docs/reference/serving-design.md section 4)
    age = alerts["EvotokQueueOldestAgeHigh"]
    assert float(age.rsplit(">", 1)[1]) == Settings.model_fields["request_timeout_s"].default / 2


def test_chart_prometheus_rule_equals_compose_alerts() -> None:
    """One set of rules: the chart's PrometheusRule with default thresholds is exactly alerts.yml."""
    rendered: Rendered = render_chart({"prometheusRule": {"enabled": True}}, "rules")
    rule = rendered.find("PrometheusRule")
    compose_groups = yaml.safe_load((MON / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    assert rule["spec"]["groups"] == compose_groups


def test_chart_thresholds_are_applied() -> None:
    rendered = render_chart(
        {"prometheusRule": {"enabled": True, "queueOldestAgeSeconds": 7.5, "codeAgreementMin": 0.95}}, "rules"
    )
    alerts = {
        r["alert"]: r
        for g in rendered.find("PrometheusRule")["spec"]["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert alerts["EvotokQueueOldestAgeHigh"]["expr"].endswith("> 7.5")
    assert alerts["EvotokCodeAgreementLow"]["expr"].endswith("< 0.95")


def test_chart_dashboard_copy_is_identical() -> None:
    chart_copy = CHART / "files" / "evotok-dashboard.json"
    assert chart_copy.read_bytes() == DASHBOARD.read_bytes(), f"cp {DASHBOARD} {chart_copy}"


def test_dashboard_panels() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = " ".join(_dashboard_exprs())
    for needle in (
        "evotok_queue_oldest_age_seconds",
        "evotok_batch_size",
        "histogram_quantile(0.99",
        "rate(evotok_http_requests_total",
        "evotok_admission_rejections_total",
    ):
        assert needle in exprs, needle
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "prometheus"
    ds = yaml.safe_load((MON / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"


def test_prometheus_scrapes_api_and_worker_ports() -> None:
    cfg = yaml.safe_load((MON / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["evotok-api"]["dns_sd_configs"][0]["port"] == 8000
    assert (
        jobs["evotok-worker"]["dns_sd_configs"][0]["port"]
        == Settings.model_fields["worker_metrics_port"].default
    )
    assert set(jobs["evotok-worker"]["dns_sd_configs"][0]["names"]) == {"worker", "worker-1"}
    # the default compose topology: `evotok serve` per GPU, whole-container metrics on the HTTP port
    assert set(jobs["evotok"]["dns_sd_configs"][0]["names"]) == {"evotok", "evotok-1"}
    assert jobs["evotok"]["dns_sd_configs"][0]["port"] == Settings.model_fields["port"].default
    assert cfg["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert Path(MON / "alerts.yml").exists()
