"""A real Prometheus (Debian's, from infra/setup.sh) scrapes a running pipeline: producer, streaming job,
loader and monitor as processes, each on its own metrics port. Its HTTP API shows throughput, lag back
to 0 after the drain, the alert rules loaded and healthy, and data for every Grafana panel's query."""

from __future__ import annotations

import json
import signal
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from infra import servers
from lakehouse.adapters.kafka import end_offsets
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from tests.conftest import wait_for
from tests.helpers import free_port, start_cli

DASHBOARD = servers.ROOT / "infra" / "grafana" / "dashboards" / "lakehouse.json"
ALERTS = servers.ROOT / "infra" / "prometheus" / "alerts.yml"


def api(settings: Settings, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{settings.prometheus_port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def query(settings: Settings, expr: str) -> list[dict[str, Any]]:
    return api(settings, "query", query=expr)["result"]


def scalar(settings: Settings, expr: str) -> float | None:
    result = query(settings, expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_running_pipeline_and_every_panel_has_data(settings: Settings, tmp_path: Path) -> None:
    settings = settings.replace(stack_dir=tmp_path / "monitoring", prometheus_port=free_port(),
                                producer_metrics_port=free_port(), streaming_metrics_port=free_port(),
                                loader_metrics_port=free_port(), monitor_metrics_port=free_port())
    print(servers.start_prometheus(settings, scrape_interval="2s"))
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = [start_cli(settings, logs / f"{name}.log", *args) for name, args in (
        ("producer", ("produce",)), ("streaming", ("stream",)), ("loader", ("load", "--every", "1")),
        ("monitor", ("metrics", "--serve")))]
    try:
        jobs = set(servers.PROMETHEUS_JOBS.values())
        wait_for(lambda: {r["metric"]["job"] for r in query(settings, "up == 1")} >= jobs, 240,
                 "every service's endpoint up in Prometheus")
        OrderGenerator.for_database(connect_mongo(settings)[settings.mongo_db], settings.collections, seed=5,
                                    violations=0.05).run(800, rate=100)
        wait_for(lambda: (scalar(settings, "sum(rate(lakehouse_producer_events_total[20s]))") or 0) > 0, 120,
                 "the producer's throughput in Prometheus")

        def drained() -> bool:
            """Kafka holds what the producer counted, the streaming job counted it all read, and the lag is 0."""
            published = sum(end_offsets(settings, settings.topics).values())
            return scalar(settings, "sum(lakehouse_producer_events_total)") == published == scalar(
                settings, 'sum(lakehouse_stream_rows_total{outcome="input"})') and scalar(
                settings, "sum(lakehouse_kafka_lag_messages)") == 0

        wait_for(drained, 600, "every event published, read by the streaming job and lag back to 0, in Prometheus")
        assert (scalar(settings, 'sum(lakehouse_stream_rows_total{outcome="silver"})') or 0) > 0
        wait_for(lambda: (scalar(settings, "sum(lakehouse_loader_changes_total)") or 0) > 0, 120, "loads counted")
        reconcile = start_cli(settings, logs / "reconcile.log", "reconcile")
        assert reconcile.wait(300) in (0, 1), (logs / "reconcile.log").read_text()
        wait_for(lambda: scalar(settings, "lakehouse_reconcile_missing") is not None, 60, "the reconcile scraped")

        rules = [r for group in api(settings, "rules")["groups"] for r in group["rules"]]
        declared = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
        assert len(rules) == len(declared) and all(r["health"] == "ok" for r in rules), rules
        for panel in json.loads(DASHBOARD.read_text())["panels"]:
            for target in panel["targets"]:
                wait_for(lambda e=target["expr"]: query(settings, e), 60,
                         f"data for the panel {panel['title']!r}: {target['expr']}")
        for expr in ("sum by (job) (rate(lakehouse_producer_events_total[1m]))", "sum(lakehouse_kafka_lag_messages)",
                     'sum by (outcome) (lakehouse_stream_rows_total)', "lakehouse_freshness_seconds"):
            print(expr, "=>", [(r["metric"], r["value"][1]) for r in query(settings, expr)])
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(120)
        print(servers.stop_prometheus(settings))
