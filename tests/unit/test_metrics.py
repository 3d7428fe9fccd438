"""The Prometheus metrics: the monitor's exposition, each service's endpoint, and what a load counts."""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from lakehouse.app.status import prometheus
from lakehouse.core import metrics
from lakehouse.core.config import Settings
from tests.helpers import free_port
from tests.lake_fakes import append_silver, lake_settings, silver_row
from warehouse import metrics as warehouse_metrics
from warehouse.loader import load

REPORT = {
    "at": "2026-11-24T10:00:00Z",
    "mongodb": {"state": "ok", "orders": 3, "collections": {"orders": 3}},
    "producer": {"state": "ok", "events_published": 7, "last_change_time": "2026-11-24T09:59:58Z"},
    "kafka": {"state": "ok", "total_lag": 5, "data_loss": [{"topic": "t", "partition": 0, "from": 4, "to": 9}],
              "partitions": [{"topic": "cdc.shop.orders", "partition": p, "end_offset": 10, "committed_offset": 10 - p,
                              "lag": p} for p in range(3)],
              "dead_letters": {"topic": "dl", "total": 1, "by_reason": {'a "quoted" reason\nwith a newline': 1}}},
    "spark": {"state": "ok", "quality": {"known_status": [10, 2]}, "silver_rows": 9},
    "warehouse": {"state": "unavailable: held"},
    "reconcile": {"state": "ok", "missing": 0, "extra": 1, "collections": [{"collection": "orders", "extra": 1}]},
    "freshness_seconds": 4,
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_monitor_exposition_parses_and_carries_lag_freshness_loss_and_reconcile() -> None:
    got = samples(prometheus(REPORT))
    assert got[("lakehouse_kafka_lag_messages", (("partition", "2"), ("topic", "cdc.shop.orders")))] == 2
    assert got[("lakehouse_freshness_seconds", ())] == 4
    assert got[("lakehouse_kafka_data_loss_records", ())] == 5
    assert got[("lakehouse_reconcile_extra", ())] == 1
    assert got[("lakehouse_reconcile_collection_extra", (("collection", "orders"),))] == 1
    assert got[("lakehouse_quality_failed", (("rule", "known_status"),))] == 2
    assert got[("lakehouse_up", (("stage", "warehouse"),))] == 0
    assert got[("lakehouse_up", (("stage", "kafka"),))] == 1
    # a reason with quotes and a newline is escaped, not a broken scrape
    assert got[("lakehouse_dead_lettered_by_reason", (("reason", 'a "quoted" reason\nwith a newline'),))] == 1
    assert not any(name == "lakehouse_warehouse_orders" for name, _ in got)  # unknown: absent, not 0


def test_a_service_serves_its_metrics_and_a_busy_port_is_a_warning_not_a_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    settings = Settings(loader_metrics_port=port, producer_metrics_port=0)
    assert metrics.serve(settings, "producer") is None  # 0: off
    server = metrics.serve(settings, "loader")
    try:
        warehouse_metrics.LOADER_REPAIRED.inc(0)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
            text = response.read().decode()
        assert "# TYPE lakehouse_loader_repaired_total counter" in text
        with caplog.at_level(logging.WARNING):
            assert metrics.serve(settings, "loader") is None  # the port is taken now
        assert f"cannot listen on 127.0.0.1:{port}" in caplog.text and "LOADER_METRICS_PORT" in caplog.text
    finally:
        server.shutdown()


def test_a_load_counts_its_changes_duration_and_version(tmp_path: Path) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    settings = lake_settings(tmp_path)
    before = (value("lakehouse_loader_changes_total", collection="orders"), value("lakehouse_loader_rows_read_total"),
              value("lakehouse_loader_load_seconds_count"))
    append_silver(settings, [silver_row(0, 1, "insert", "created", "10.00"),
                             silver_row(1, 1, "update", "paid", "10.00")])
    load(settings)
    append_silver(settings, [silver_row(1, 1, "update", "paid", "10.00")])  # a duplicate: read, not new
    load(settings)
    after = (value("lakehouse_loader_changes_total", collection="orders"), value("lakehouse_loader_rows_read_total"),
             value("lakehouse_loader_load_seconds_count"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 3, 2]
    assert value("lakehouse_loader_silver_version") == 1
    assert value("lakehouse_loader_newest_change_timestamp_seconds") > 0
