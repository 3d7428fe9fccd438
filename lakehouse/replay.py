"""`lakehouse replay`: feed a stage again from a starting point, idempotently.

  into kafka      re-publish from MongoDB's change stream (from a resume token or a cluster time) or
                  from a fresh snapshot (--from-beginning). Events keep their change_id, so the
                  warehouse keeps each change once. The live producer's token is not touched.
  into lake       reprocess Kafka (from offsets, a message time, or the beginning) through the lake
                  query under a new checkpoint. Messages whose Kafka coordinates the lake already
                  holds are skipped, so the lake's tables gain only what they missed.
  into warehouse  load the matching changes again from the lake, replacing what the warehouse has
                  for them in one transaction (--from-beginning builds a new file and swaps it in).

Every replay can run any number of times: the warehouse ends equal to the source.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads

from lakehouse import tables
from lakehouse.config import Settings
from lakehouse.progress import Progress

log = logging.getLogger(__name__)

TARGETS = ("kafka", "lake", "warehouse")
# Which starting points each target understands, and why not the others.
SUPPORTED = {
    "kafka": ("token", "time", "beginning"),
    "lake": ("offsets", "time", "beginning"),
    "warehouse": ("token", "time", "offsets", "beginning"),
}
_WHY_NOT = {
    ("kafka", "offsets"): "Kafka offsets are not a position in MongoDB; use --from-token or --from-time",
    ("lake", "token"): "a resume token is not a position in Kafka; use --from-offsets or --from-time",
}


class ReplayError(ValueError):
    """The replay cannot start as asked; the message says what to give instead."""


@dataclass(frozen=True)
class StartPoint:
    kind: str  # token | time | offsets | beginning
    token: dict[str, str] | None = None
    time: datetime | None = None
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "token":
            return f"resume token {self.token['_data'][:24]}..." if self.token else "resume token"
        if self.kind == "time":
            return f"{self.time.isoformat() if self.time else '?'}"
        if self.kind == "offsets":
            return ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(self.offsets.items()))
        return "the beginning"


def parse_token(text: str) -> dict[str, str]:
    """A resume token as the producer stores it ({"_data": "..."}), or just its _data hex string."""
    text = text.strip()
    try:
        value = json.loads(text) if text.startswith("{") else {"_data": text}
    except json.JSONDecodeError as exc:
        raise ReplayError(f"--from-token {text!r} is neither JSON nor a hex string: {exc}") from exc
    data = value.get("_data") if isinstance(value, dict) else None
    if not isinstance(data, str) or not data or any(c not in "0123456789abcdefABCDEF" for c in data):
        raise ReplayError(f'--from-token must be {{"_data": "<hex>"}} or the hex string itself, not {text!r}')
    return {"_data": data}


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without zone is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReplayError(f"--from-time {text!r} is not an ISO 8601 time such as 2026-11-23T10:00:00Z") from exc
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    # MongoDB's cluster time counts seconds in 32 bits; Kafka's message times start at the epoch.
    if not datetime(1970, 1, 1, tzinfo=UTC) <= moment < datetime(2106, 2, 7, tzinfo=UTC):
        raise ReplayError(f"--from-time {text!r} is outside what MongoDB's and Kafka's clocks count "
                          "(1970-01-01 to 2106-02-06)")
    return moment


def parse_offsets(text: str) -> dict[tuple[str, int], int]:
    """'topic:partition:offset,...' (topic names may hold dots, not colons)."""
    offsets: dict[tuple[str, int], int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            topic, partition, offset = item.rsplit(":", 2)
            offsets[(topic, int(partition))] = int(offset)
        except ValueError as exc:
            raise ReplayError(
                f"--from-offsets item {item!r} is not topic:partition:offset (e.g. cdc.shop.orders:0:1200)"
            ) from exc
        if not topic or not 0 <= int(partition) < 2**31 or not 0 <= int(offset) < 2**63:
            raise ReplayError(f"--from-offsets item {item!r}: name the topic; partition and offset must be whole "
                              "numbers from 0 (partition below 2^31, offset below 2^63)")
    if not offsets:
        raise ReplayError("--from-offsets is empty; give topic:partition:offset[,...]")
    return offsets


def start_point(from_token: str | None, from_time: str | None, from_offsets: str | None,
                from_beginning: bool) -> StartPoint:
    given = [name for name, value in (("--from-token", from_token), ("--from-time", from_time),
                                      ("--from-offsets", from_offsets), ("--from-beginning", from_beginning)) if value]
    if len(given) != 1:
        raise ReplayError("give exactly one of --from-token, --from-time, --from-offsets, --from-beginning"
                          + (f" (got {', '.join(given)})" if given else ""))
    if from_token:
        return StartPoint("token", token=parse_token(from_token))
    if from_time:
        return StartPoint("time", time=parse_time(from_time))
    if from_offsets:
        return StartPoint("offsets", offsets=parse_offsets(from_offsets))
    return StartPoint("beginning")


def check_supported(into: str, start: StartPoint) -> None:
    if start.kind not in SUPPORTED[into]:
        why = _WHY_NOT.get((into, start.kind), "")
        raise ReplayError(f"--into {into} cannot start from --from-{start.kind}: {why}")


def replay(settings: Settings, into: str, start: StartPoint, dry_run: bool = False,
           say: Callable[[str], None] = print, spark: Any = None) -> None:
    """`spark`: a running session for the lake replay (else one is started and stopped)."""
    check_supported(into, start)
    if into == "lake":
        _into_lake(settings, start, dry_run, say, spark)
    else:
        {"kafka": _into_kafka, "warehouse": _into_warehouse}[into](settings, start, dry_run, say)


# -- into kafka -------------------------------------------------------------------------------------
def _into_kafka(settings: Settings, start: StartPoint, dry_run: bool, say: Callable[[str], None]) -> None:
    from bson import Timestamp
    from pymongo.errors import OperationFailure

    from lakehouse.mongo import connect as connect_mongo
    from lakehouse.mongo import require_replica_set
    from producer.checkpoint import Checkpoint, FileCheckpointStore
    from producer.listener import ChangeStreamListener

    what = {
        "token": f"every change after {start.describe()}",
        "time": f"every change since cluster time {start.describe()}",
        "beginning": "a snapshot of every document, then the changes made meanwhile",
    }[start.kind]
    collections = ", ".join(f"{settings.mongo_db}.{c}" for c in settings.collections)
    client = connect_mongo(settings, "lakehouse-replay")
    try:
        require_replica_set(client, settings)  # before anything else: no replay can work without one
        counts = {c: client[settings.mongo_db][c].estimated_document_count() for c in settings.collections}
    finally:
        client.close()
    if dry_run:
        detail = ""
        if start.kind == "beginning":
            detail = " (" + ", ".join(f"{c}: ~{n} documents" for c, n in counts.items()) + ")"
        say(f"dry run: would re-publish {what} from {collections}{detail} into "
            f"{', '.join(settings.topics)}, until caught up; the producer's own resume token is left alone")
        return
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="replay-kafka-", dir=settings.state_dir) as scratch:
        replay_settings = settings.replace(state_dir=Path(scratch))
        if start.kind == "token":
            FileCheckpointStore(replay_settings.producer_checkpoint).save(Checkpoint(start.token or {}, None, 0))
        start_at = Timestamp(int(start.time.timestamp()), 0) if start.time else None
        listener = ChangeStreamListener(replay_settings, snapshot_mode="initial" if start.kind == "beginning"
                                        else "never", start_at=start_at)
        say(f"replaying {what} from {collections} into Kafka ...")
        try:
            stats = listener.run(until_idle=True)
        except (OperationFailure, RuntimeError) as exc:
            raise ReplayError(
                f"cannot replay from {start.describe()}: {exc}. MongoDB's history may no longer reach back that "
                "far; replay with --from-beginning instead"
            ) from exc
        finally:
            listener.close()
    say(f"replayed into Kafka: {stats.published} change events, {stats.snapshots} snapshot copies")


# -- into lake --------------------------------------------------------------------------------------
def kafka_starting_offsets(settings: Settings, start: StartPoint) -> tuple[dict[str, dict[str, int]],
                                                                          dict[tuple[str, int], int]]:
    """Per topic and partition, where the replay starts (Spark's JSON form; -2 = the beginning), and
    the end offsets now."""
    from kafka import TopicPartition

    from lakehouse.kafka_io import consumer as kafka_consumer
    from lakehouse.kafka_io import partitions_of

    consumer = kafka_consumer(settings)
    try:
        partitions = [tp for topic in settings.topics for tp in partitions_of(consumer, topic)]
        ends = consumer.end_offsets(partitions) if partitions else {}
        end_offsets = {(tp.topic, tp.partition): int(o) for tp, o in ends.items()}
        if start.kind == "beginning":
            return ({t: {str(tp.partition): -2 for tp in partitions if tp.topic == t} for t in settings.topics},
                    end_offsets)
        if start.kind == "offsets":
            unknown = sorted(f"{t}[{p}]" for t, p in start.offsets if TopicPartition(t, p) not in partitions)
            if unknown:
                raise ReplayError(f"--from-offsets names {', '.join(unknown)}, not among this pipeline's topic "
                                  f"partitions ({', '.join(f'{tp.topic}[{tp.partition}]' for tp in partitions)})")
            chosen: dict[str, dict[str, int]] = {}
            for (topic, partition), offset in start.offsets.items():
                chosen.setdefault(topic, {})[str(partition)] = offset
            return chosen, end_offsets
        assert start.time is not None
        found = consumer.offsets_for_times({tp: int(start.time.timestamp() * 1000) for tp in partitions})
        result: dict[str, dict[str, int]] = {}
        for tp in partitions:
            at = found.get(tp)
            result.setdefault(tp.topic, {})[str(tp.partition)] = at.offset if at is not None else ends[tp]
        return result, end_offsets
    finally:
        consumer.close()


def _into_lake(settings: Settings, start: StartPoint, dry_run: bool, say: Callable[[str], None],
               spark: Any = None) -> None:
    offsets, ends = kafka_starting_offsets(settings, start)
    messages = 0
    for topic, parts in offsets.items():
        for partition, offset in parts.items():
            end = ends.get((topic, int(partition)), 0)
            messages += end if offset == -2 else max(0, end - offset)
    checkpoint_root = settings.state_dir / "replays" / f"lake-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    plan = (f"reprocess up to {messages} Kafka messages from {start.describe()} into the lake at "
            f"{settings.lake_path} under the new checkpoint {checkpoint_root}; messages the lake already holds "
            "are skipped")
    if dry_run:
        say(f"dry run: would {plan}")
        return
    from streaming.job import build_session
    from streaming.job import start as start_lake

    say(f"replay: {plan} ...")
    replay_settings = settings.replace(state_dir=checkpoint_root)
    session = spark or build_session(replay_settings)
    try:
        query = start_lake(session, replay_settings, available_now=True, starting_offsets=json.dumps(offsets),
                           skip_seen=True)
        with Progress("replay into lake", total=messages, unit="messages") as progress:
            while not query.awaitTermination(2):
                progress.update_to(_batch_totals(replay_settings).get("input_rows", 0))
            progress.update_to(_batch_totals(replay_settings).get("input_rows", 0))
        if query.exception():
            raise RuntimeError(f"the replay query failed: {query.exception()}")
    finally:
        if spark is None:
            session.stop()
    written = _batch_totals(replay_settings)
    say(f"replayed into the lake: {written.get('input_rows', 0)} messages read, "
        f"{written.get('already_in_lake', 0)} already there, {written.get('silver_rows', 0)} new silver rows, "
        f"{written.get('quarantined', 0)} quarantined")


def _batch_totals(settings: Settings) -> dict[str, int]:
    from lakehouse.status import batch_metrics

    totals: dict[str, int] = {}
    for entry in batch_metrics(settings):
        for key in ("input_rows", "already_in_lake", "silver_rows", "quarantined"):
            totals[key] = totals.get(key, 0) + int(entry.get(key, 0))
    return totals


# -- into warehouse ---------------------------------------------------------------------------------
def _first_change_after(settings: Settings, token: dict[str, str]) -> tuple[int, int] | None:
    """Cluster time of the first change after a resume token, asking MongoDB (a token's encoding is
    the server's business). None when nothing has happened since."""
    from pymongo.errors import PyMongoError

    from lakehouse.mongo import connect as connect_mongo
    from lakehouse.mongo import require_replica_set
    from producer.listener import watch_pipeline

    client = connect_mongo(settings, "lakehouse-replay")
    try:
        require_replica_set(client, settings)
        with client[settings.mongo_db].watch(watch_pipeline(settings), start_after=token,
                                             max_await_time_ms=500) as stream:
            for _ in range(3):  # an empty batch does not yet mean the stream is at its end
                change = stream.try_next()
                if change is not None:
                    return int(change["clusterTime"].time), int(change["clusterTime"].inc)
        return None
    except PyMongoError as exc:
        raise ReplayError(f"MongoDB cannot resume from {token.get('_data', '')[:24]}... ({exc}); replay the warehouse "
                          "with --from-time or --from-offsets instead") from exc
    finally:
        client.close()


def _warehouse_selection(settings: Settings, start: StartPoint) -> tuple[str, pads.Expression]:
    """The same set of changes as SQL over fact_order_changes and as a filter over silver."""
    s, inc = pads.field("cluster_time_s"), pads.field("cluster_time_inc")
    if start.kind == "time":
        assert start.time is not None
        second = int(start.time.timestamp())
        return f"cluster_time_s >= {second}", s >= second
    if start.kind == "token":
        after = _first_change_after(settings, start.token or {})
        if after is None:
            return "false", s < 0  # nothing happened after that token
        second, increment = after
        return (f"(cluster_time_s, cluster_time_inc) >= ({second}, {increment})",
                (s > second) | ((s == second) & (inc >= increment)))
    sql, expression = [], None
    for (topic, partition), offset in sorted(start.offsets.items()):
        sql.append(f"(kafka_topic = '{topic.replace(chr(39), chr(39) * 2)}' AND kafka_partition = {partition} "
                   f"AND kafka_offset >= {offset})")
        part = ((pads.field("kafka_topic") == topic) & (pads.field("kafka_partition") == partition)
                & (pads.field("kafka_offset") >= offset))
        expression = part if expression is None else expression | part
    assert expression is not None
    return " OR ".join(sql), expression


def _into_warehouse(settings: Settings, start: StartPoint, dry_run: bool, say: Callable[[str], None]) -> None:
    from warehouse.loader import WarehouseError, apply, connect, count, read_silver, rebuild, silver_table

    if start.kind == "beginning":
        if dry_run:
            silver = silver_table(settings)
            rows = 0 if silver is None else silver.to_pyarrow_dataset().count_rows()
            say(f"dry run: would build a new warehouse from all {rows} silver rows at "
                f"{settings.table_path(tables.SILVER)}, then replace {settings.warehouse_path} with it")
            return
        result = rebuild(settings)
        say(f"rebuilt {settings.warehouse_path} from silver v{result.delta_version}: {result.new_changes} changes, "
            f"{result.orders} current orders")
        return
    where_sql, where_arrow = _warehouse_selection(settings, start)
    silver = silver_table(settings)
    if silver is None:
        raise WarehouseError(f"no silver table at {settings.table_path(tables.SILVER)} to replay from")
    incoming = read_silver(silver, where=where_arrow, what="replay: read silver")
    con = connect(settings.warehouse_path)
    try:
        if start.kind == "offsets":
            known = {(t, p) for t, p in con.execute(
                "SELECT DISTINCT kafka_topic, kafka_partition FROM fact_order_changes").fetchall()}
            known |= {(r["kafka_topic"], r["kafka_partition"]) for r in incoming.select(
                ["kafka_topic", "kafka_partition"]).to_pylist()}
            unknown = sorted(f"{t}[{p}]" for t, p in start.offsets if (t, p) not in known)
            if unknown:
                have = ", ".join(sorted(f"{t}[{p}]" for t, p in known)) or "nothing"
                raise ReplayError(f"--from-offsets names {', '.join(unknown)}, which neither the warehouse nor the "
                                  f"lake has changes from (they have {have})")
        replaced = int(con.execute(f"SELECT count(*) FROM fact_order_changes WHERE {where_sql}").fetchall()[0][0])
        if dry_run:
            say(f"dry run: would replace {replaced} warehouse changes from {start.describe()} with the "
                f"{incoming.num_rows} silver rows that match, and re-derive the orders they touch")
            return
        inserted = apply(con, incoming, None, replace=where_sql, aggregates=settings.table_path(tables.AGGREGATES))
        say(f"replayed into the warehouse from {start.describe()}: {replaced} changes replaced by {inserted} from "
            f"the lake; {count(con, 'orders')} current orders")
    finally:
        con.close()
