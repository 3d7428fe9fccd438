"""The embedded Kafka's plan and configuration, without starting it: ports, quorum, replication."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra import kafka_broker
from infra.processes import StackError
from lakehouse.core.config import Settings


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_one_broker_is_its_own_quorum_with_replication_one(tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", stack_dir=tmp_path)  # port 1: nothing listens
    layout = kafka_broker.plan(settings, 1)
    (node,) = layout.nodes
    assert (node.id, node.port, node.controller_port) == (1, 1, 2)
    props = _props(kafka_broker.properties(settings, layout, node))
    assert props["controller.quorum.voters"] == "1@127.0.0.1:2"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1,CONTROLLER://127.0.0.1:2"  # loopback only
    assert (props["default.replication.factor"], props["min.insync.replicas"]) == ("1", "1")
    assert props["log.dirs"] == str(tmp_path / "kafka" / "broker-1" / "data")


def test_a_cluster_takes_the_listed_ports_and_replicates_three_times_with_two_in_sync(tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:11,127.0.0.1:21,127.0.0.1:31", stack_dir=tmp_path)
    layout = kafka_broker.plan(settings, kafka_broker.CLUSTER_BROKERS)
    assert [n.port for n in layout.nodes] == [11, 21, 31]
    assert layout.bootstrap == "127.0.0.1:11,127.0.0.1:21,127.0.0.1:31"
    ports = [p for n in layout.nodes for p in (n.port, n.controller_port)]
    assert len(set(ports)) == 6, "a controller port collides with another listener"
    for node in layout.nodes:
        props = _props(kafka_broker.properties(settings, layout, node))
        assert props["node.id"] == str(node.id) and props["process.roles"] == "broker,controller"
        assert len(props["controller.quorum.voters"].split(",")) == 3
        assert props["default.replication.factor"] == props["offsets.topic.replication.factor"] == "3"
        assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
        assert props["unclean.leader.election.enable"] == "false"


def test_one_address_plans_the_ports_after_it(tmp_path: Path) -> None:
    layout = kafka_broker.plan(Settings(kafka_bootstrap_servers="127.0.0.1:41", stack_dir=tmp_path), 3)
    assert [n.port for n in layout.nodes] == [41, 43, 45]


def test_cluster_ids_are_kafka_uuids() -> None:
    ids = {kafka_broker._cluster_id() for _ in range(200)}
    assert len(ids) == 200 and all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_a_saved_one_broker_kafka_is_not_turned_into_a_cluster(tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", stack_dir=tmp_path)
    folder = kafka_broker.folder(settings)
    folder.mkdir(parents=True)
    (folder / "cluster.json").write_text(json.dumps(
        {"cluster_id": "x", "nodes": [{"id": 1, "host": "127.0.0.1", "port": 1, "controller_port": 2}]}))
    with pytest.raises(StackError, match="holds a 1-broker Kafka"):
        kafka_broker.start(settings, 3)
    with pytest.raises(StackError, match="has no broker 2"):
        kafka_broker.start_node(settings, 2)


def test_a_broker_that_dies_while_starting_is_reported_at_once_in_its_own_words(tmp_path: Path) -> None:
    """The wait for a server does not swallow the error that says it exited (it was reported 120 s later
    as "not ready", with the previous run's log)."""
    import time

    from infra import processes

    def died() -> bool:
        raise StackError("Kafka broker in /x exited while starting:\nCannot allocate memory")

    started = time.monotonic()
    with pytest.raises(StackError, match="exited while starting:\nCannot allocate memory"):
        processes.wait("Kafka broker 1", died, tmp_path / "server.log", timeout=60)
    assert time.monotonic() - started < 5
