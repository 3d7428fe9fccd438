"""A service asked to stop (SIGTERM) in the middle of long work stops within seconds and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.core.config import Settings
from tests.conftest import wait_for
from tests.helpers import drain, read_topic, start_cli, stream_lake
from warehouse.loader import load

STOP_WITHIN_S = 10.0


@pytest.mark.faults
def test_the_loader_stops_within_seconds_in_the_middle_of_a_reconcile_round(spark: object, settings: Settings) -> None:
    """The round's first look reads every document of MongoDB (here 150,000 the warehouse has not seen);
    a SIGTERM while it reads ends it between batches. (It read on for minutes, and was SIGKILLed once.)"""
    orders = connect_mongo(settings)[settings.mongo_db]["orders"]
    orders.insert_one({"order_id": "o-first", "status": "created", "amount": "1.00"})
    drain(settings)
    stream_lake(spark, settings)
    load(settings)
    for start in range(0, 150_000, 10_000):
        orders.insert_many([{"order_id": f"o-{n}", "status": "created", "amount": "2.50", "note": "x" * 200}
                            for n in range(start, start + 10_000)], ordered=False)
    log = settings.state_dir / "loader.log"
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    loader = start_cli(settings, log, "load", "--every", "1", "--reconcile-every", "1")
    try:
        wait_for(lambda: "reconcile orders: read MongoDB:" in log.read_text(errors="replace"), 180,
                 "the reconcile round reading MongoDB")
        _stop(loader, log)
    finally:
        if loader.poll() is None:
            loader.kill()
    assert "loader stopped" in log.read_text(errors="replace")


def _stop(process: subprocess.Popen[bytes], log: Path) -> float:
    """SIGTERM; seconds until it exited 0 (fails when it did not within STOP_WITHIN_S)."""
    asked = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(STOP_WITHIN_S + 5)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"no stop within {STOP_WITHIN_S + 5:.0f} s of SIGTERM:\n"
                             + log.read_text(errors="replace")[-3000:]) from None
    took = time.monotonic() - asked
    assert code == 0 and took <= STOP_WITHIN_S, (code, took, log.read_text(errors="replace")[-3000:])
    return took


@pytest.mark.faults
def test_the_producer_stops_within_seconds_in_the_middle_of_a_snapshot_and_copies_again(settings: Settings) -> None:
    """SIGTERM during the initial copy abandons it between batches (no token says it was made); the next
    start copies every document again, so none is missing."""
    orders = connect_mongo(settings)[settings.mongo_db]["orders"]
    for start in range(0, 150_000, 10_000):
        orders.insert_many([{"order_id": f"o-{n}", "status": "created", "amount": "2.50", "note": "x" * 200}
                            for n in range(start, start + 10_000)], ordered=False)
    log = settings.state_dir / "producer.log"
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    producer = start_cli(settings, log, "produce", "--snapshot", "initial")
    wait_for(lambda: "snapshot:" in log.read_text(errors="replace"), 180, "the snapshot under way")
    _stop(producer, log)
    assert "stopped during the snapshot" in log.read_text(errors="replace")
    drain(settings)  # a new start copies again, whole
    copied = {m["key"] for m in read_topic(settings, settings.topic_for("orders")) if m["op"] == "snapshot"}
    assert copied >= {f"o-{n}" for n in range(150_000)}


@pytest.mark.parametrize(("stage", "then"), [
    ("produce", "still away after"),  # it tries again (a new listener), it does not exit
    ("stream", None),
])
def test_a_service_waits_for_a_kafka_that_is_away_and_still_stops_at_once(settings: Settings, stage: str,
                                                                          then: str | None) -> None:
    """A broker away is waited for (with back-off, said once), not an exit (the producer had exited when
    Kafka went away, the streaming job when restarted while it was down); a stop meanwhile ends it at once."""
    from tests.helpers import free_port

    away = settings.replace(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    log = away.state_dir / f"{stage}.log"
    away.state_dir.mkdir(parents=True, exist_ok=True)
    service = start_cli(away, log, stage)
    try:
        wait_for(lambda: "waiting for it: trying again with back-off" in log.read_text(errors="replace"), 120,
                 f"{stage} saying it waits for Kafka")
        if then:
            wait_for(lambda: then in log.read_text(errors="replace"), 60, "a second try, not an exit")
        assert service.poll() is None, log.read_text(errors="replace")[-3000:]
        assert log.read_text(errors="replace").count("waiting for it") == 1  # once per episode
        _stop(service, log)
    finally:
        if service.poll() is None:
            service.kill()


def test_the_streaming_job_waits_for_topics_the_producer_has_not_created_yet(settings: Settings) -> None:
    """Started before the producer, the job waits for its topics (said once) instead of failing five
    times in Spark and exiting 1; a bounded run says which topic is missing in one line, before Spark."""
    from lakehouse.adapters.kafka import ensure_topics

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    bounded = subprocess.run([sys.executable, "-m", "lakehouse.app.cli", "stream", "--available-now"],
                             env={**os.environ, **settings.to_env()}, capture_output=True, text=True, timeout=120)
    assert bounded.returncode == 1, bounded.stdout + bounded.stderr
    errors = [line for line in bounded.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and settings.topic_for("orders") in errors[0], bounded.stderr
    assert "Traceback" not in bounded.stderr and not (settings.lake_path / "delta").exists()

    log = settings.state_dir / "stream.log"
    service = start_cli(settings, log, "stream")
    try:
        wait_for(lambda: "yet: the producer creates the topics" in log.read_text(errors="replace"), 120,
                 "the job saying it waits for the topics")
        assert service.poll() is None, log.read_text(errors="replace")[-3000:]
        ensure_topics(settings, settings.topics)
        wait_for(lambda: "it answers again" in log.read_text(errors="replace"), 120, "the job seeing the topics")
        assert log.read_text(errors="replace").count("waiting for it") == 1  # said once
        assert service.poll() is None, log.read_text(errors="replace")[-3000:]
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            code = service.wait(120)
        except subprocess.TimeoutExpired:
            service.kill()
            raise
    assert code == 0, log.read_text(errors="replace")[-3000:]
