"""The alert rules and the dashboard: `promtool check rules` and `promtool test rules` (expected alerts for
synthetic series, infra/prometheus/alerts_test.yml), the scrape config infra/servers.py writes, and every
metric a rule or a panel names is one the pipeline exposes (a typo would be a silent, never-firing rule)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import producer.metrics  # noqa: F401 - each registers its stage's metrics
import streaming.metrics  # noqa: F401
import warehouse.metrics  # noqa: F401
from infra import servers
from lakehouse.app.status import metric_families
from lakehouse.core.config import Settings
from tests.unit.test_metrics import REPORT

PROMETHEUS = servers.ROOT / "infra" / "prometheus"
DASHBOARD = servers.ROOT / "infra" / "grafana" / "dashboards" / "lakehouse.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    done = subprocess.run([servers.tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_alert_rules_are_valid_and_fire_on_the_series_they_are_for() -> None:
    assert "SUCCESS: 10 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_every_alert_has_a_test_case() -> None:
    rules = {r["alert"] for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert rules == tested


def test_the_scrape_config_written_for_this_machine_is_valid(tmp_path: Path) -> None:
    settings = Settings(stack_dir=tmp_path, loader_metrics_port=0)
    config = tmp_path / "prometheus.yml"
    config.write_text(servers.prometheus_config(settings))
    promtool("check", "config", str(config))
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in yaml.safe_load(config.read_text())[
        "scrape_configs"]}
    assert jobs == {"lakehouse-producer": ["127.0.0.1:9101"], "lakehouse-streaming": ["127.0.0.1:9102"],
                    "lakehouse-monitor": ["127.0.0.1:9108"]}  # a service with port 0 serves nothing: not scraped


def exposed() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names | {family.name for family in metric_families(REPORT)} | {
        "lakehouse_reconcile_mismatched", "lakehouse_reconcile_repaired", "lakehouse_warehouse_orders",
        "lakehouse_reconcile_deferred", "lakehouse_reconcile_in_flight"}


def named_in(text: str) -> set[str]:
    return set(re.findall(r"\blakehouse_[a-z_]+\b", text)) - {"lakehouse_"}


def test_every_metric_a_rule_or_a_panel_names_is_exposed_by_the_pipeline() -> None:
    rules = named_in(" ".join(r["expr"] for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
                              for r in g["rules"]))
    panels = named_in(" ".join(t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]))
    assert rules and panels
    assert rules - exposed() == set()
    assert panels - exposed() == set()
