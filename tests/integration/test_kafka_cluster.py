"""The pipeline on a replicated Apache Kafka (three KRaft brokers, replication 3, min.insync.replicas 2,
unclean election off, started by infra/kafka_broker.py): the producers (both clients), the streaming job
and the loader run as their own processes while changes are made. One broker is SIGKILLed mid-stream and
started again, or all three are restarted one after another. Nothing acknowledged may be lost: the
producer finds no loss, the streaming source records none, the warehouse equals MongoDB per collection
and holds each change once."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import kafka_broker, servers
from lakehouse.adapters.kafka import end_offsets, replicas, under_replicated
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.app.reconcile import combined, lines, reconcile_each
from lakehouse.contracts.types import ident
from lakehouse.core.config import Settings
from producer.checkpoint import FileCheckpointStore, shortfall
from producer.generator import OrderGenerator
from tests.conftest import wait_for
from tests.helpers import free_port, start_cli, warehouse_rows

# Minutes of kills (make chaos runs it; make test does not).
pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def kafka_cluster(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Three brokers on free ports beside the session's one-broker Kafka (the session's MongoDB)."""
    ports = []
    while len(ports) < kafka_broker.CLUSTER_BROKERS:
        port = free_port()
        if port not in ports:
            ports.append(port)
    cluster = stack.replace(stack_dir=tmp_path_factory.mktemp("kafka-cluster"),
                            kafka_bootstrap_servers=",".join(f"127.0.0.1:{p}" for p in ports))
    try:
        for line in kafka_broker.start(cluster, kafka_broker.CLUSTER_BROKERS):
            print(line)
        yield cluster
    finally:
        for line in kafka_broker.stop(cluster):
            print(line)


def _generate(settings: Settings, stop: threading.Event, rate: float, seed: int) -> None:
    generator = OrderGenerator.for_database(connect_mongo(settings)[settings.mongo_db], settings.collections,
                                            seed=seed)
    made, started = 0, time.monotonic()
    while not stop.is_set():
        generator.step()
        made += 1
        ahead = started + made / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


def _published(settings: Settings) -> int:
    try:
        return sum(end_offsets(settings, settings.topics).values())
    except Exception:  # noqa: BLE001 - metadata moving between brokers: ask again
        return 0


def _in_sync(settings: Settings) -> bool:
    try:
        return not under_replicated(settings)
    except Exception:  # noqa: BLE001
        return False


def _grows(settings: Settings, what: str) -> None:
    """Records keep being acknowledged (the producer is not stuck while a broker is away)."""
    before = _published(settings)
    wait_for(lambda: _published(settings) > before + 50, 120, f"the producer to publish {what}")


def _say(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what}", flush=True)


def test_pipeline_on_a_replicated_kafka_loses_nothing_when_brokers_go(kafka_cluster: Settings, settings: Settings,
                                                                     tmp_path: Path) -> None:
    """Property: with replication 3 and min.insync.replicas 2, one broker SIGKILLed and started again, and
    then every broker restarted in turn, lose no acknowledged record and stop no stage. Both Kafka clients
    at once: one producer (kafka-python) captures orders, another (confluent) the other collections, each
    with its own checkpoint; one streaming job and one loader take them all. Both faults in one run: a
    run's set-up (Spark's first batches beside three brokers) takes minutes here."""
    settings = settings.replace(kafka_bootstrap_servers=kafka_cluster.kafka_bootstrap_servers,
                                stack_dir=kafka_cluster.stack_dir, producer_metrics_port=0,
                                streaming_metrics_port=0, loader_metrics_port=0)
    others = tuple(c for c in settings.collections if c != "orders")
    assert others, "collections.toml should describe more than orders"
    producers = {"kafka-python": settings.replace(collections=("orders",), kafka_client="kafka-python"),
                 "confluent": settings.replace(collections=others, kafka_client="confluent",
                                               state_dir=tmp_path / "confluent-producer")}
    logs = {name: tmp_path / f"{name}.log" for name in ("kafka-python", "confluent", "streaming", "loader")}
    processes = {**{client: start_cli(s, logs[client], "produce") for client, s in producers.items()},
                 "streaming": start_cli(settings, logs["streaming"], "stream"),
                 "loader": start_cli(settings, logs["loader"], "load", "--every", "1")}
    stop = threading.Event()
    generator = threading.Thread(target=_generate, args=(settings, stop, 40.0, 7), daemon=True)
    try:
        for client, s in producers.items():
            wait_for(lambda s=s: s.producer_checkpoint.exists(), 120, f"the {client} producer's change stream")
        generator.start()
        _say("producers ready, changes being made")
        wait_for(lambda: settings.batch_metrics.exists() and settings.batch_metrics.read_text().count("\n") >= 2,
                 600, "the streaming job's first batches")  # 3 brokers, 2 producers, Spark's cold batch: 2 cores
        _say("streaming job running")
        held = replicas(settings, settings.topics)
        assert held and all(r == (3, 3) for r in held.values()), f"the pipeline's topics are not replicated: {held}"

        _say(servers.kill_kafka(settings, 2))
        _grows(settings, "with broker 2 killed")
        _say(kafka_broker.start_node(settings, 2))
        wait_for(lambda: _in_sync(settings), 180, "broker 2 back in every in-sync replica set")
        _say("every replica in sync; now a rolling restart")
        for node in range(1, kafka_broker.CLUSTER_BROKERS + 1):
            _say(kafka_broker.stop_node(settings, node))
            _grows(settings, f"with broker {node} stopped")
            _say(kafka_broker.start_node(settings, node))
            wait_for(lambda: _in_sync(settings), 180, f"broker {node} back in every in-sync replica set")
            _say("every replica in sync")
        _grows(settings, "after the brokers came back")
        stop.set()
        generator.join(30)

        def reconciled() -> bool:
            try:
                return combined(reconcile_each(settings)).ok
            except Exception:  # noqa: BLE001 - the loader holds the warehouse now and then
                return False

        _say("changes stopped")
        wait_for(reconciled, 600, "the warehouse to equal MongoDB in every collection")
        _say("reconciled")
        for name, process in processes.items():
            assert process.poll() is None, f"the {name} stopped: {logs[name].read_text()[-3000:]}"
    finally:
        stop.set()
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(120)

    results = reconcile_each(settings)
    print("\n".join(lines(results)))
    assert all(r.ok and not (r.missing or r.extra or r.mismatched) for r in results)
    for name in settings.collections:
        table = ident(settings.collection(name).changes)
        facts = [r[0] for r in warehouse_rows(settings, f"SELECT change_id FROM {table}")]
        assert facts and len(facts) == len(set(facts)), f"{name}: a change_id twice in the warehouse"
    assert not settings.data_loss_log.exists() or not settings.data_loss_log.read_text().strip()
    now = {f"{t}:{p}": o for (t, p), o in end_offsets(settings, settings.topics).items()}
    for client, s in producers.items():
        assert "KAFKA LOST ACKNOWLEDGED RECORDS" not in logs[client].read_text(), client
        acked = FileCheckpointStore(s.producer_checkpoint).load().acked_offsets
        assert acked and not shortfall(acked, now), f"Kafka holds fewer records than {client} saw acknowledged"
