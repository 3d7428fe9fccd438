"""Shared fixtures. Integration tests share one real MongoDB replica set and one Kafka broker per
test run, started by the project's own infra code on free ports: under pytest-xdist (`make test` runs
two workers) the first worker that needs them starts them and the others use the same ones, and the
run's controller stops them at the end. Each test gets its own database, topics, lake and warehouse,
so tests never see each other's data."""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lakehouse.core.config import Settings
from tests.helpers import free_port

# Where a run's workers find the servers the first of them started (in the run's shared temp folder).
STACK_FILE = "lakehouse-stack.json"
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = "unit" if "/tests/unit/" in str(item.path) else "integration"
        item.add_marker(getattr(pytest.mark, kind))


def _new_stack(base: Path) -> dict[str, str]:
    return {"mongo_uri": f"mongodb://127.0.0.1:{free_port()}/", "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
            "stack_dir": str(base / "servers"), "lake_path": str(base / "lake"),
            "warehouse_path": str(base / "warehouse.duckdb"), "state_dir": str(base / "state"),
            "spark_master": "local[2]", "trigger_seconds": "1.0"}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    from infra import servers

    if not WORKER:  # one process: this session starts and stops them
        settings = Settings.from_env(**_new_stack(tmp_path_factory.mktemp("stack")))
        for line in servers.start(settings):
            print(line)
        try:
            yield settings
        finally:
            for line in servers.stop(settings):
                print(line)
        return
    shared = tmp_path_factory.getbasetemp().parent  # the controller's, one per run
    with _locked(shared / f"{STACK_FILE}.lock"):
        file = shared / STACK_FILE
        if file.exists():
            settings = Settings.from_env(**json.loads(file.read_text()))
        else:
            overrides = _new_stack(shared / "stack")
            settings = Settings.from_env(**overrides)
            file.write_text(json.dumps(overrides))  # first: a start that fails half-way is still stopped
            for line in servers.start(settings):
                print(line)
    yield settings  # stopped by the controller, once every worker is done (pytest_unconfigure)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller of an xdist run stops the servers its workers shared."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    file = config._tmp_path_factory.getbasetemp() / STACK_FILE  # type: ignore[attr-defined]
    if file.exists():
        from infra import servers

        for line in servers.stop(Settings.from_env(**json.loads(file.read_text()))):
            print(line)


_counter = iter(range(10_000))


@pytest.fixture
def settings(stack: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """The session's servers with this test's own database, topics and folders; the topics and the
    database are removed after the test (a broker's work grows with the partitions it holds, so what
    earlier tests left would slow later ones)."""
    name = re.sub(r"\W+", "_", request.node.name)[:30].strip("_")
    n = f"{WORKER.removeprefix('gw')}x{next(_counter)}" if WORKER else str(next(_counter))  # unique in the run
    yield stack.replace(
        mongo_db=f"t{n}_{name}",
        topic_prefix=f"t{n}",
        lake_path=tmp_path / "lake",
        warehouse_path=tmp_path / "warehouse.duckdb",
        state_dir=tmp_path / "state",
    )
    _remove_test_data(stack, f"t{n}.", f"t{n}_{name}")


def _remove_test_data(stack: Settings, topic_prefix: str, database: str) -> None:
    """Best effort: a test that left a server stopped or slow must not fail in its clean-up."""
    from kafka.admin import KafkaAdminClient
    from pymongo import MongoClient

    from lakehouse.adapters.kafka import require_broker

    try:
        require_broker(stack, timeout=2)
        admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap_servers, request_timeout_ms=10_000)
        try:
            mine = [t for t in admin.list_topics() if t.startswith(topic_prefix)]
            if mine:
                admin.delete_topics(mine)
        finally:
            admin.close()
    except Exception as exc:  # noqa: BLE001
        print(f"clean-up: topics {topic_prefix}* not deleted: {exc}")
    try:
        client: MongoClient = MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=2000)
        try:
            client.drop_database(database)
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001
        print(f"clean-up: database {database} not dropped: {exc}")


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> object:
    """Poll until `condition()` is truthy; fail with `what` at the deadline. Never sleep-and-hope."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def spark_local() -> Iterator[object]:
    """One local Spark session (Spark's Kafka source and delta-spark on its classpath) for the whole run:
    the tests of Spark code without servers and the in-process streaming tests share it."""
    from streaming.job import build_session

    session = build_session(Settings.from_env(spark_master="local[2]"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark(stack: Settings, spark_local: object) -> object:
    """The session's Spark, for tests with the servers."""
    return spark_local
