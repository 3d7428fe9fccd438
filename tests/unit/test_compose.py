"""infra/docker-compose.yml cannot run here (no Docker engine); this checks what can be checked: the
pipeline's services run real `lakehouse` commands, are configured only by the pipeline's own
environment variables, and reach the servers the way containers must."""

from __future__ import annotations

from pathlib import Path

import yaml

from lakehouse.app.cli import cli
from lakehouse.core.config import ENV_NAMES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "infra" / "docker-compose.yml").read_text())
PIPELINE = ("producer", "streaming", "loader", "monitor", "generate", "cli")


def test_servers_and_pipeline_services_are_all_there() -> None:
    assert {"mongodb", "kafka", *PIPELINE} <= set(COMPOSE["services"])
    assert "--replSet" in COMPOSE["services"]["mongodb"]["command"]
    assert "rs.initiate" in COMPOSE["services"]["mongodb"]["healthcheck"]["test"]
    assert COMPOSE["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft


def test_pipeline_services_run_lakehouse_commands_with_the_pipeline_settings() -> None:
    known = set(ENV_NAMES.values())
    for name in PIPELINE:
        service = COMPOSE["services"][name]
        assert service["command"][0] in cli.commands, (name, service["command"])
        assert set(service["environment"]) <= known, (name, set(service["environment"]) - known)
        assert {"mongodb", "kafka"} <= set(service["depends_on"]), name


def test_containers_reach_the_servers_by_service_name() -> None:
    env = COMPOSE["services"]["producer"]["environment"]
    kafka = COMPOSE["services"]["kafka"]["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] in kafka["KAFKA_ADVERTISED_LISTENERS"]
    # The replica set's member is named 127.0.0.1 for the host, so containers must not discover it.
    assert env["MONGO_URI"].startswith("mongodb://mongodb:27017/") and "directConnection=true" in env["MONGO_URI"]


def test_the_image_is_built_from_this_repository() -> None:
    build = COMPOSE["services"]["producer"]["build"]
    dockerfile = (ROOT / "infra" / build["context"] / build["dockerfile"]).resolve()
    text = dockerfile.read_text()
    assert "requirements.txt" in text and "openjdk-17-jre-headless" in text
    for folder in ("lakehouse", "producer", "streaming", "warehouse"):
        assert f"COPY {folder} {folder}" in text


def test_prometheus_scrapes_every_service_on_its_metrics_port_and_grafana_is_provisioned() -> None:
    from infra.servers import PROMETHEUS_JOBS
    from lakehouse.core.config import Settings

    scrape = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in scrape["scrape_configs"]}
    defaults = Settings()
    assert targets == {job: f"{service}:{defaults.metrics_port(service)}" for service, job in PROMETHEUS_JOBS.items()}
    assert all(service in COMPOSE["services"] for service in PROMETHEUS_JOBS)
    assert COMPOSE["services"]["producer"]["environment"]["METRICS_HOST"] == "0.0.0.0"  # reachable from prometheus
    mounts = COMPOSE["services"]["prometheus"]["volumes"]
    assert any(m.startswith("./prometheus/alerts.yml:") for m in mounts) and "/etc/prometheus/alerts.yml" in \
        scrape["rule_files"]
    for mount in COMPOSE["services"]["grafana"]["volumes"]:
        assert (ROOT / "infra" / mount.split(":")[0]).exists(), mount
