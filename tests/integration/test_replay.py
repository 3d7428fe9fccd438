"""`lakehouse replay` against the real servers: every target from every starting point it takes,
twice, then the warehouse is reconciled with MongoDB."""

from __future__ import annotations

from datetime import UTC, datetime

from click.testing import CliRunner
from deltalake import DeltaTable

from lakehouse.adapters.kafka import end_offsets
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.app.cli import cli
from lakehouse.app.reconcile import reconcile
from lakehouse.app.replay import StartPoint, parse_offsets, replay
from lakehouse.contracts import tables
from lakehouse.core.config import Settings
from producer.checkpoint import FileCheckpointStore
from producer.generator import OrderGenerator
from tests.conftest import wait_for
from tests.helpers import drain, stream_lake
from warehouse.connection import connect
from warehouse.loader import load


def change_ids(settings: Settings) -> set[str]:
    con = connect(settings.warehouse_path, read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT change_id FROM fact_order_changes "
                                     "WHERE op NOT IN ('snapshot', 'snapshot_end')").fetchall()}
    finally:
        con.close()


def topics_named_like(settings: Settings) -> set[str]:
    """The broker's topics named like this test's."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        return {t for t in admin.list_topics() if t.startswith(settings.topic_prefix + ".")}
    finally:
        admin.close()


def silver_rows(settings: Settings) -> int:
    return DeltaTable(str(settings.table_path(tables.SILVER))).to_pyarrow_dataset().count_rows()


def assert_reconciled(settings: Settings, label: str) -> None:
    result = reconcile(settings, "orders")
    assert result.ok and result.source > 0, f"after {label}: {result.line()} {result.examples()}"


def test_replay_from_every_starting_point_twice_then_reconcile(spark: object, settings: Settings) -> None:
    client = connect_mongo(settings)
    generator = OrderGenerator.for_database(client[settings.mongo_db], settings.collections, seed=5)
    generator.run(150)
    drain(settings)
    # The middle of the history, as each stage names it.
    token = FileCheckpointStore(settings.producer_checkpoint).load().resume_token  # type: ignore[union-attr]
    offsets = ",".join(f"{t}:{p}:{o}" for (t, p), o in sorted(end_offsets(settings, settings.topics).items()))
    second = int(client.admin.command("ping")["operationTime"].time) + 1
    wait_for(lambda: client.admin.command("ping")["operationTime"].time >= second, 10, "the next cluster second")
    middle = datetime.fromtimestamp(second, UTC)
    generator.run(150)
    drain(settings)
    stream_lake(spark, settings)
    load(settings)
    assert_reconciled(settings, "the first load")
    loaded, in_silver = change_ids(settings), silver_rows(settings)

    token_start = StartPoint("token", token=token)
    time_start = StartPoint("time", time=middle)
    offsets_start = StartPoint("offsets", offsets=parse_offsets(offsets))
    beginning = StartPoint("beginning")
    said: list[str] = []

    for start in (token_start, time_start, beginning):
        for _ in range(2):
            replay(settings, "kafka", start, say=said.append)
        stream_lake(spark, settings)
        load(settings)
        assert_reconciled(settings, f"replay into kafka from {start.kind}")
        assert change_ids(settings) == loaded, f"replay into kafka from {start.kind} changed the changes"
    assert said[-1].startswith("replayed into Kafka:") and not said[-1].endswith(" 0 snapshot copies"), said[-1]
    in_silver = silver_rows(settings)  # the Kafka replays added messages; the lake took them once each

    for start in (offsets_start, time_start, beginning):
        for _ in range(2):
            replay(settings, "lake", start, say=said.append, spark=spark)
            assert silver_rows(settings) == in_silver, f"replay into lake from {start.kind} added rows"
        load(settings)
        assert_reconciled(settings, f"replay into lake from {start.kind}")
    assert "0 new silver rows" in said[-1]

    for start in (token_start, time_start, offsets_start, beginning):
        for _ in range(2):
            replay(settings, "warehouse", start, say=said.append)
        assert_reconciled(settings, f"replay into warehouse from {start.kind}")
        assert change_ids(settings) == loaded

    # The lake lost: Kafka reprocessed into a new lake, the warehouse rebuilt from it.
    fresh = settings.replace(lake_path=settings.lake_path.with_name("lake2"),
                             warehouse_path=settings.warehouse_path.with_name("rebuilt.duckdb"))
    replay(fresh, "lake", beginning, say=said.append, spark=spark)
    replay(fresh, "warehouse", beginning, say=said.append)
    assert_reconciled(fresh, "a new lake and a rebuilt warehouse")
    assert change_ids(fresh) == loaded
    client.close()


def test_replay_cli_dry_run_and_bad_start_points(settings: Settings) -> None:
    client = connect_mongo(settings)
    # A start point MongoDB refuses is refused before anything is made: no collection, no pre-images, no topic.
    result = CliRunner().invoke(cli, ["replay", "--into", "kafka", "--from-token", "deadbeef"], env=settings.to_env())
    assert result.exit_code == 2 and "cannot replay from" in result.output, result.output
    assert client[settings.mongo_db].list_collection_names() == []
    assert topics_named_like(settings) == set()
    OrderGenerator.for_database(client[settings.mongo_db], settings.collections, seed=6).run(20)
    client.close()
    drain(settings)
    env = settings.to_env()
    runner = CliRunner()
    result = runner.invoke(cli, ["replay", "--into", "kafka", "--from-beginning", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert "dry run: would re-publish a snapshot of every document" in result.output
    result = runner.invoke(cli, ["replay", "--into", "lake", "--from-beginning", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert "dry run: would reprocess up to" in result.output and "Kafka messages from the beginning" in result.output
    assert not settings.lake_path.exists()
    result = runner.invoke(cli, ["replay", "--into", "kafka", "--from-offsets", "x:0:1"], env=env)
    assert result.exit_code == 2 and "use --from-token or --from-time" in result.output
    result = runner.invoke(cli, ["replay", "--into", "lake", "--from-offsets", "nope:0:1"], env=env)
    assert result.exit_code == 2 and "not among this pipeline's topic partitions" in result.output
    result = runner.invoke(cli, ["replay", "--into", "warehouse", "--from-time", "2026-11-23T10:00:00Z"], env=env)
    assert result.exit_code == 1 and f"no lake at {settings.lake_path}" in result.output
