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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lakehouse.contracts import tables
from lakehouse.core.config import Settings
from lakehouse.core.errors import ConfigError
from lakehouse.core.progress import Progress
from warehouse.replace import Changes

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


class ReplayError(ConfigError):
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

    from lakehouse.adapters.mongo import HistoryLost, MongoFailed, require_replica_set
    from lakehouse.adapters.mongo import connect as connect_mongo
    from producer.listener import CannotResume, republish

    what = {
        "token": f"every change after {start.describe()}",
        "time": f"every change since cluster time {start.describe()}",
        "beginning": "a snapshot of every document, then the changes made meanwhile",
    }[start.kind]
    collections = ", ".join(f"{settings.mongo_db}.{c}" for c in settings.collections)
    client = connect_mongo(settings, "lakehouse-replay")
    try:
        require_replica_set(client, settings)  # before anything else: no replay can work without one
        counts = ({c: client[settings.mongo_db][c].estimated_document_count() for c in settings.collections}
                  if dry_run and start.kind == "beginning" else {})
    finally:
        client.close()
    if dry_run:
        detail = " (" + ", ".join(f"{c}: ~{n} documents" for c, n in counts.items()) + ")" if counts else ""
        say(f"dry run: would re-publish {what} from {collections}{detail} into "
            f"{', '.join(settings.topics)}, until caught up; the producer's own resume token is left alone")
        return
    start_at = Timestamp(int(start.time.timestamp()), 0) if start.time else None
    say(f"replaying {what} from {collections} into Kafka ...")
    try:
        stats = republish(settings, resume_token=start.token if start.kind == "token" else None, start_at=start_at,
                          snapshot=start.kind == "beginning")
    except (HistoryLost, MongoFailed, CannotResume) as exc:
        raise ReplayError(
            f"cannot replay from {start.describe()}: {exc}. MongoDB's history may no longer reach back that "
            "far; replay with --from-beginning instead"
        ) from exc
    say(f"replayed into Kafka: {stats.published} change events, {stats.snapshots} snapshot copies")


# -- into lake --------------------------------------------------------------------------------------
def kafka_starting_offsets(settings: Settings, start: StartPoint) -> tuple[dict[str, dict[str, int]],
                                                                          dict[tuple[str, int], int]]:
    """Per topic and partition, where the replay starts (Spark's JSON form; -2 = the beginning), and
    the end offsets now."""
    from lakehouse.adapters.kafka import OffsetReader
    from lakehouse.contracts.positions import split_key

    reader = OffsetReader.of(settings)
    try:
        keys = reader.partitions(settings.topics)
        ends = reader.end_offsets(keys)
        end_offsets = {split_key(k): o for k, o in ends.items()}
        if start.kind == "beginning":
            return ({t: {str(p): -2 for (topic, p) in end_offsets if topic == t} for t in settings.topics},
                    end_offsets)
        if start.kind == "offsets":
            unknown = sorted(f"{t}[{p}]" for t, p in start.offsets if (t, p) not in end_offsets)
            if unknown:
                raise ReplayError(f"--from-offsets names {', '.join(unknown)}, not among this pipeline's topic "
                                  f"partitions ({', '.join(f'{t}[{p}]' for t, p in end_offsets)})")
            chosen: dict[str, dict[str, int]] = {}
            for (topic, partition), offset in start.offsets.items():
                chosen.setdefault(topic, {})[str(partition)] = offset
            return chosen, end_offsets
        assert start.time is not None
        found = reader.first_offsets_at(keys, int(start.time.timestamp() * 1000))
        result: dict[str, dict[str, int]] = {}
        for key in keys:
            topic, partition = split_key(key)
            at = found.get(key)
            result.setdefault(topic, {})[str(partition)] = at if at is not None else ends[key]
        return result, end_offsets
    finally:
        reader.close()


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
    from streaming.job import QueryFailed, build_session
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
            raise QueryFailed(f"the replay query failed: {query.exception()}")
    finally:
        if spark is None:
            session.stop()
    written = _batch_totals(replay_settings)
    say(f"replayed into the lake: {written.get('input_rows', 0)} messages read, "
        f"{written.get('already_in_lake', 0)} already there, {written.get('silver_rows', 0)} new silver rows, "
        f"{written.get('quarantined', 0)} quarantined")


def _batch_totals(settings: Settings) -> dict[str, int]:
    from lakehouse.contracts import batches

    return batches.totals(batches.read(settings.batch_metrics))


# -- into warehouse ---------------------------------------------------------------------------------
def _first_change_after(settings: Settings, token: dict[str, str]) -> tuple[int, int] | None:
    """Cluster time of the first change after a resume token, asking MongoDB (a token's encoding is
    the server's business). None when nothing has happened since."""
    from lakehouse.adapters.mongo import ChangeStream, HistoryLost, MongoFailed, require_replica_set
    from lakehouse.adapters.mongo import connect as connect_mongo
    from producer.listener import watch_pipeline

    client = connect_mongo(settings, "lakehouse-replay")
    try:
        require_replica_set(client, settings)
        with ChangeStream(client[settings.mongo_db], watch_pipeline(settings), resume_token=token,
                          max_await_time_ms=500) as stream:
            for _ in range(3):  # an empty batch does not yet mean the stream is at its end
                change = stream.try_next()
                if change is not None:
                    return int(change["clusterTime"].time), int(change["clusterTime"].inc)
        return None
    except (HistoryLost, MongoFailed) as exc:
        raise ReplayError(f"MongoDB cannot resume from {token.get('_data', '')[:24]}... ({exc}); replay the warehouse "
                          "with --from-time or --from-offsets instead") from exc
    finally:
        client.close()


def _warehouse_changes(settings: Settings, start: StartPoint) -> Changes:
    """The warehouse's changes a start point means: from a cluster time, or from Kafka offsets."""
    if start.kind == "time":
        assert start.time is not None
        return Changes(since_cluster_time=(int(start.time.timestamp()), 0))
    if start.kind == "token":
        after = _first_change_after(settings, start.token or {})
        return Changes(since_cluster_time=after)  # None: nothing happened after that token
    return Changes(since_offsets=tuple((t, p, o) for (t, p), o in sorted(start.offsets.items())))


def _into_warehouse(settings: Settings, start: StartPoint, dry_run: bool, say: Callable[[str], None]) -> None:
    from warehouse.lake import silver_table
    from warehouse.loader import current_documents, rebuild
    from warehouse.replace import UnknownPartitions, replace_changes

    if start.kind == "beginning":
        if dry_run:
            silver = silver_table(settings)
            rows = 0 if silver is None else silver.count_rows()
            say(f"dry run: would build a new warehouse from all {rows} silver rows at "
                f"{settings.table_path(tables.SILVER)}, then replace {settings.warehouse_path} with it")
            return
        result = rebuild(settings)
        say(f"rebuilt {settings.warehouse_path} from silver v{result.delta_version}: {result.new_changes} changes, "
            f"current documents: {current_documents(result.current)}")
        return
    try:
        done = replace_changes(settings, _warehouse_changes(settings, start), dry_run=dry_run)
    except UnknownPartitions as exc:
        raise ReplayError(str(exc)) from exc
    if dry_run:
        say(f"dry run: would replace {done.replaced} warehouse changes from {start.describe()} with the "
            f"{done.matching} silver rows that match, and re-derive the documents they touch")
        return
    say(f"replayed into the warehouse from {start.describe()}: {done.replaced} changes replaced by {done.inserted} "
        f"from the lake; current documents: {current_documents(done.current)}")
