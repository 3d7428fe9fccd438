"""Kafka -> bronze, silver and quality_checks: the lake query, the pipeline's hot path.

One streaming query reads the captured topics with Spark's own Kafka source; each micro-batch is parsed
once and judged row by row: every message goes to bronze with the reason it cannot be a silver row
(malformed, or ruled out by a quality rule of severity quarantine; null when it is one), the rest to
silver, late ones marked with the watermark they arrived behind; per rule, the counts go to
quality_checks. Three commits a batch, each by delta-spark from the executors, idempotently per batch
(streaming/lake_writer.py), so a restart after a kill -9 reflects every Kafka offset exactly once. Only
counts and metrics come back to the driver. The quarantine and late_events tables, the Parquet copy and
the order lines are made from those marks by queries of their own (streaming/lake_copies.py), and the
windowed aggregates, alerts and sessions by queries over silver (start_derived).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQueryListener

from lakehouse.adapters.delta import add_missing_columns, ensure_table
from lakehouse.adapters.kafka import KafkaTransient, TopicsMissing, require_topics
from lakehouse.contracts import batches, tables, types
from lakehouse.contracts.batches import BatchRecord
from lakehouse.contracts.events import (
    ENVELOPE_FIELD_NAMES,
    ENVELOPE_FIELDS,
    OLDEST_READ_VERSION,
    OPERATIONS,
    RENAMED_FIELDS,
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
)
from lakehouse.core.backoff import AwayEpisode
from lakehouse.core.collections import MONEY_COLUMNS
from lakehouse.core.config import Settings, for_stage
from lakehouse.core.errors import ConfigError, LakehouseError, ServerUnreachable
from lakehouse.core.rules import QUALITY_FLAGS
from lakehouse.core.stopping import StopSignals
from streaming import inventory, metrics, sessions
from streaming.aggregates import reset_derived_if_old, revenue_checkpoint, start_aggregates, start_revenue_by_category
from streaming.kafka_losses import (
    LOSS_CHECK_SECONDS,
    KafkaDataLoss,
    LossWatch,
    is_data_loss,
    loss_watch,
    migrate_checkpoint,
)
from streaming.lake_copies import checkpoints as copy_checkpoints
from streaming.lake_copies import start_copies
from streaming.lake_writer import TABLE_PROPERTIES, OnceAppender, lake_table_properties, writer_app_id
from streaming.quality import QualityJudge
from streaming.udfs import money_columns
from streaming.watermark import WatermarkTracker

log = logging.getLogger(__name__)

# The envelope as parsed: this version's fields and the older versions' renamed ones (read, then renamed);
# NOT_ENVELOPE holds the raw text of a message that does not fit it.
NOT_ENVELOPE = "_not_envelope"
ENVELOPE_DDL = types.spark_ddl((*ENVELOPE_FIELDS, *((old, "string") for old in RENAMED_FIELDS)))


# How long an executor's Kafka consumer waits for a record before asking the broker whether the offset still
# exists. Spark's default (spark.network.timeout, 120 s) is paid once per offset range a re-created topic or
# retention took away (failOnDataLoss=false then skips it): a chaos run's restart waited 11 minutes on them.
KAFKA_POLL_TIMEOUT_MS = 15_000

SCHEDULER_POOLS = Path(__file__).with_name("scheduler_pools.xml")
LAKE_POOL, BACKGROUND_POOL = "lake", "background"


def in_pool(spark: SparkSession, pool: str) -> None:
    """Jobs this thread starts from now on, and the queries it starts, run in the scheduler pool `pool`."""
    spark.sparkContext.setLocalProperty("spark.scheduler.pool", pool)


# Spark's Kafka source and delta-spark, fetched by `make setup` from infra/jars/spark/pom.xml.
SPARK_JARS = Path(__file__).resolve().parents[1] / ".tools" / "jars" / "spark"


def job_jars() -> list[str]:
    jars = sorted(str(j) for j in SPARK_JARS.glob("*.jar"))
    if not any("spark-sql-kafka" in j for j in jars) or not any("delta-spark" in j for j in jars):
        raise ConfigError(f"Spark's Kafka source and delta-spark jars are not in {SPARK_JARS}; run `make setup` "
                          "(it fetches them from Maven Central with infra/jars/spark/pom.xml)")
    return jars


def build_session(settings: Settings) -> SparkSession:
    # Python workers must run this interpreter, which has pyspark, pyarrow and the UDFs' packages.
    settings = for_stage(settings, "streaming")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if settings.spark_master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    _jvm_ignores_sigterm()
    builder = (
        SparkSession.builder.master(settings.spark_master)
        .appName("lakehouse-streaming")
        .config("spark.jars", ",".join(job_jars()))  # shipped to the executors by Spark; no Ivy, no download
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.session.timeZone", "UTC")
        # A Delta snapshot's log is small here: 50 partitions (the default) to read it costs seconds a batch.
        .config("spark.databricks.delta.snapshotPartitions", "2")
        # No .crc file after each commit: computing it was half of a small append (0.1 s of 0.26 s), per table
        # and batch; the protocol does not need it and the lake's readers (delta-rs, DuckDB) do not read it.
        .config("spark.databricks.delta.writeChecksumFile.enabled", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
        # The lake query's jobs take the free task slots before the copies' and the aggregates' (pools).
        .config("spark.scheduler.mode", "FAIR")
        .config("spark.scheduler.allocation.file", str(SCHEDULER_POOLS))
    )
    for name, value in TABLE_PROPERTIES.items():
        builder = builder.config(f"spark.databricks.delta.properties.defaults.{name.removeprefix('delta.')}", value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    # One shuffle partition per core: Spark's default (200) is for clusters of many; a batch's shuffles
    # here are small, and each partition is a task. Adaptive execution is off for the same reason: it runs
    # each shuffle stage of a batch's many small plans as a job of its own (measured: 15% of a batch).
    spark.conf.set("spark.sql.shuffle.partitions", str(spark.sparkContext.defaultParallelism))
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    return spark


def _jvm_ignores_sigterm() -> None:
    """Start Spark's JVM with SIGTERM ignored, so that a SIGTERM to the job's process group (a service
    manager, run-all, Ctrl-C's cousin) reaches only this driver, which finishes the batch in hand and
    stops Spark itself; otherwise the JVM's shutdown hook stops the SparkContext under the running batch.
    An ignored signal stays ignored across exec; the JVM still exits when this driver goes (its stdin
    closes) or on SIGKILL."""
    from pyspark import java_gateway

    if getattr(java_gateway.Popen, "lakehouse_wrapped", False):
        return
    popen = java_gateway.Popen

    def launch(*args: Any, **kwargs: Any) -> Any:
        inner = kwargs.get("preexec_fn")

        def preexec() -> None:
            if inner is not None:
                inner()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

        kwargs["preexec_fn"] = preexec
        return popen(*args, **kwargs)

    launch.lakehouse_wrapped = True  # type: ignore[attr-defined]
    java_gateway.Popen = launch  # type: ignore[assignment]


def read_kafka(spark: SparkSession, settings: Settings, starting_offsets: str = "earliest") -> DataFrame:
    """The captured topics through Spark's own Kafka source."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", ",".join(settings.topics))
        .option("startingOffsets", starting_offsets)
        .option("failOnDataLoss", str(settings.kafka_fail_on_data_loss).lower())
        .option("kafkaConsumer.pollTimeoutMs", str(KAFKA_POLL_TIMEOUT_MS))
    )
    if settings.max_rows_per_batch:
        reader = reader.option("maxOffsetsPerTrigger", str(settings.max_rows_per_batch))
    return reader.load()


def _any(conditions: list[Column]) -> Column:
    return functools.reduce(lambda a, b: a | b, conditions, F.lit(False))


def _quarantine_reason(event: Column, fields: Column, raw: Column) -> Column:
    """Why a message cannot become a silver row; null when it can. Most messages are well-formed
    envelopes, judged by cheap tests on the parsed envelope alone; `fields` (the message as a map of
    field -> raw JSON text, made only for a message that does not fit the envelope's schema)
    tells what is wrong with the others."""
    return F.when(_readable(event), _envelope_reason(event, raw, None)).otherwise(_envelope_reason(event, raw, fields))


def _readable(event: Column) -> Column:
    """Spark read the message into the envelope's schema: JSON, an object, each field of its type."""
    return event.isNotNull() & event[NOT_ENVELOPE].isNull()


def _envelope_reason(event: Column, raw: Column, fields: Column | None) -> Column:
    """The envelope's checks in the order they are reported; those of a field's type only with `fields`
    (the message as a map, to tell a missing field from one of the wrong type). Each check is a cheap test
    first; its text is made only for the messages that fail it."""
    reason = F.when(raw.isNull() | (F.trim(raw) == ""), F.lit("empty message value"))
    if fields is not None:
        reason = reason.when(fields.isNull(), F.when(F.try_parse_json(raw).isNull(), F.lit("malformed JSON"))
                             .otherwise(F.lit("not a JSON object")))
    reason = (
        reason.when(F.coalesce(event["schema_version"], F.lit(0)) > SCHEMA_VERSION,
                    F.concat(F.lit("unsupported schema_version "), event["schema_version"].cast("string")))
        .when(event["schema_version"] < OLDEST_READ_VERSION,
              F.concat(F.lit("schema_version "), event["schema_version"].cast("string"),
                       F.lit(f" is a development build's envelope, before release 1 (this release reads "
                             f"v{OLDEST_READ_VERSION} to v{SCHEMA_VERSION}); capture again with "
                             "`lakehouse replay --into kafka`")))
    )
    if fields is not None:
        mistyped = [(name, envelope_field(event, name).isNull() & fields[name].isNotNull()
                     & (fields[name] != "null")) for name, _ in ENVELOPE_FIELDS]
        reason = reason.when(_any([wrong for _, wrong in mistyped]), F.concat(
            F.lit(f"field(s) of the wrong type for envelope schema v{SCHEMA_VERSION}: "),
            F.concat_ws(", ", *[F.when(wrong, F.lit(name)) for name, wrong in mistyped])))
    missing = [(name, envelope_field(event, name).isNull()) for name in REQUIRED_FIELDS]
    return (
        reason.when(_any([absent for _, absent in missing]), F.concat(
            F.lit("missing required field(s): "), F.concat_ws(", ", *[F.when(absent, F.lit(name))
                                                                     for name, absent in missing])))
        .when(~event["op"].isin(*OPERATIONS), F.concat(F.lit("unknown op "), event["op"]))
    )


_NEW_NAMES = {new: old for old, new in RENAMED_FIELDS.items()}


def envelope_field(event: Column, name: str) -> Column:
    """A field of the parsed envelope by this version's name: an older envelope's renamed field is read
    under its new name (v2's order_id is v3's key). Read field by field: rebuilding the struct with the
    new names (withField) made Spark parse the message's JSON once per field, 5 s a 100,000-row batch."""
    old = _NEW_NAMES.get(name)
    return event[name] if old is None else F.coalesce(event[name], event[old])


def _event_time(settings: Settings, document: Column) -> Column:
    cluster_time = F.timestamp_seconds(F.col("event.cluster_time_s"))
    if settings.event_time_source == "cluster_time":
        return cluster_time
    return F.coalesce(F.to_timestamp(F.get_json_object(document, "$.updated_at['$date']")), cluster_time)  # updated_at


def parse(raw: DataFrame, settings: Settings) -> DataFrame:
    """Kafka rows -> one wide row per message with the parsed envelope and a quarantine reason.
    Top-level fields the envelope schema does not know are kept as JSON in `extra`."""
    value = F.col("value").cast("string")
    parsed = raw.select(
        F.col("topic").alias("kafka_topic"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        F.col("key").cast("string").alias("kafka_key"),
        value.alias("raw_value"),
        F.from_json(value, f"{ENVELOPE_DDL}, {NOT_ENVELOPE} STRING",
                    {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": NOT_ENVELOPE}).alias("event"),
    )
    # Only a message that does not fit the envelope is parsed again, as a map, to say what is wrong.
    as_map = F.from_json("raw_value", "MAP<STRING, STRING>", {"mode": "PERMISSIVE"})
    parsed = parsed.withColumn("fields", F.when(~_readable(F.col("event")), as_map))
    known = F.array(*[F.lit(name) for name in (*ENVELOPE_FIELD_NAMES, *RENAMED_FIELDS)])
    # The keys alone (no values) tell whether there are unknown fields; the rare message with some is
    # parsed again for their values.
    unknown = F.map_filter(as_map, lambda k, _: ~F.array_contains(known, k))
    has_unknown = F.size(F.array_except(F.json_object_keys("raw_value"), known)) > 0  # a hash set
    document = F.coalesce(F.col("event.full_document"), F.col("event.before_document"))
    collection = F.col("event.collection")
    attributes = parsed.select(
        "*",
        _quarantine_reason(F.col("event"), F.col("fields"), F.col("raw_value")).alias("quarantine_reason"),
        F.when(has_unknown, F.to_json(unknown)).alias("extra"),
        _event_time(settings, document).alias("event_time"),
        *attribute_columns(settings, collection, document),
        document.alias("document"),
    ).drop("fields")
    # The money columns are read from the document's own JSON text (exact digits, Decimal128).
    money = {spec.name: spec.money for spec in map(settings.collection, settings.collections) if spec.money}
    amount_field = _by_collection(collection, {name: F.lit(m.amount) for name, m in money.items()})
    currency_field = _by_collection(collection, {name: F.lit(m.currency) for name, m in money.items()})
    return attributes.select(
        "*", *money_columns(F.col("document"), amount_field, currency_field, settings.high_value_thresholds)
    ).drop("document")


def _by_collection(collection: Column, values: dict[str, Column]) -> Column:
    """values[the row's collection], null for a collection not in `values`."""
    chosen = F.lit(None)
    for name, value in values.items():
        chosen = F.when(collection == name, value).otherwise(chosen)
    return chosen


def _lifted(document: Column, field: str, kind: str) -> Column:
    """A document field (relaxed Extended JSON) as a typed column; null when it does not convert."""
    path = "$" + "".join(f".{step}" if step.isidentifier() else f"['{step}']" for step in field.split("."))
    text = F.get_json_object(document, path)
    if kind == "timestamp":
        return F.coalesce(F.try_to_timestamp(F.get_json_object(document, path + "['$date']")),
                          F.try_to_timestamp(text))
    if kind.startswith("decimal") or kind in ("long", "int", "double"):
        number = F.coalesce(*(F.get_json_object(document, f"{path}['{wrapper}']") for wrapper in
                              ("$numberDecimal", "$numberLong", "$numberInt", "$numberDouble")), text)
        return number.try_cast(types.spark(kind))
    if kind == "date":
        return F.coalesce(F.get_json_object(document, path + "['$date']"), text).substr(1, 10).try_cast("date")
    return text if kind == "string" else text.try_cast(types.spark(kind))


def attribute_columns(settings: Settings, collection: Column, document: Column) -> list[Column]:
    """The typed columns the spec lifts out of each collection's documents (money aside: a UDF does those)."""
    lifted: dict[str, dict[str, Column]] = {}
    not_lifted = {name for name, _ in MONEY_COLUMNS} | {QUALITY_FLAGS}  # set by the UDFs and the quality rules
    for name in settings.collections:
        for attribute in settings.collection(name).attributes:
            lifted.setdefault(attribute.name, {})[name] = _lifted(document, attribute.field, attribute.type)
    return [_by_collection(collection, lifted.get(column, {})).cast(types.spark(kind)).alias(column)
            for column, kind in tables.attribute_columns(settings) if column not in not_lifted]


UNPARSED = "_unparsed"  # why a message is no change event at all (the envelope's checks); null when it is one


def judged(raw: DataFrame, settings: Settings, judge: QualityJudge) -> DataFrame:
    """Kafka rows -> silver's columns with the Kafka coordinates, the raw value and the verdicts of the row
    rules: `quarantine_reason` (the envelope's, else a quarantine rule's) and `quality_flags`. The whole
    per-row plan of the lake query, built once when the query starts."""
    parsed = parse(raw, settings).withColumnRenamed("quarantine_reason", UNPARSED)
    silver_names = [name for name, _ in tables.silver_columns(tables.attribute_columns(settings))]
    envelope = [envelope_field(F.col("event"), name).alias(name) for name, _ in ENVELOPE_FIELDS]
    rest = [F.to_date("event_time").alias(name) if name == "event_date" else F.col(name)
            for name in silver_names[len(ENVELOPE_FIELDS):]
            if name not in (QUALITY_FLAGS, tables.LATE_WATERMARK, *WRITTEN)]
    extra = [c for c in (*tables.KAFKA_COLUMNS, "kafka_key", "raw_value", UNPARSED) if c not in silver_names]
    rows = judge.judge(parsed.select(*envelope, *rest, *extra), F.col(UNPARSED).isNull()).rows
    return rows.withColumn("quarantine_reason", F.coalesce(F.col(UNPARSED), F.col("quarantine_reason")))


WRITTEN = ("batch_id", "ingested_at")


def _cast(columns: types.Columns) -> list[Column]:
    """conform()'s columns, made once."""
    return [F.col(name).cast(types.spark(kind)).alias(name) for name, kind in columns]


class BatchWriter:
    """The foreachBatch function of the lake query: its judged rows (built once, `judged`) stamped with the
    batch, counted once, and appended once per batch to bronze, silver and quality_checks by delta-spark
    from the executors; only counts come back to the driver."""

    def __init__(self, spark: SparkSession, settings: Settings, judge: QualityJudge, skip_seen: bool = False) -> None:
        settings = for_stage(settings, "streaming")
        self.spark = spark
        self.settings = settings
        self.skip_seen = skip_seen
        self._seen: DataFrame | None = None
        self.app_id = writer_app_id(settings.spark_checkpoint)
        self.appender = OnceAppender(self.app_id)
        self.metrics_path = settings.batch_metrics
        self.watermark = WatermarkTracker(settings.state_dir / "spark" / "watermark.json", settings.watermark_delay)
        self.judge = judge
        self.silver_columns = _cast(tables.silver_columns(tables.attribute_columns(settings)))
        self.bronze_columns = _cast(tables.BRONZE_COLUMNS)
        self.phases: dict[str, int] = {}  # this batch's phases, in ms
        self.losses = loss_watch(settings)
        # The loss watch asks Kafka while Spark reads the batch: one thread, so a batch's look follows the
        # remembering of the batch before it (200-400 ms a batch on the critical path when done in line).
        self._watching = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-loss-watch")
        self._remembered: Future[None] | None = None

    def close(self) -> None:
        self._watching.shutdown(wait=True)
        self.losses.close()

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        self.phases = {}
        looked = self._watching.submit(self.losses.check, batch_id)
        now = datetime.now(UTC)
        watermark = self.watermark.for_batch(batch_id)
        watermark_at = None if watermark is None else datetime.fromtimestamp(watermark / 1_000_000, UTC)
        kept = F.col("quarantine_reason").isNull()
        late = (F.when(kept & (F.col("event_time") < F.lit(watermark_at).cast("timestamp")),
                       F.lit(watermark_at).cast("timestamp")) if watermark_at else F.lit(None).cast("timestamp"))
        # As many partitions as cores: a batch arrives in one per Kafka partition (a dozen small ones here),
        # and every stage over it would run a task per partition, each costing more than its rows.
        batch = batch_df.coalesce(self.spark.sparkContext.defaultParallelism)
        read = None
        if self.skip_seen:
            read = batch.count()
            batch = batch.join(self._seen_coordinates(), list(tables.KAFKA_COLUMNS), "left_anti")
        rows = batch.withColumns({"batch_id": F.lit(batch_id).cast("long"), "ingested_at": F.lit(now).cast("timestamp"),
                                  tables.LATE_WATERMARK: late}).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            # One pass reads, parses and judges the batch into its cache and counts everything the driver
            # needs, per collection and event day (the quality_checks rows are these counts too).
            groups = rows.groupBy("collection", "event_date").agg(
                F.count(F.lit(1)).alias("input"), F.count(F.col(UNPARSED)).alias("unparsed"),
                F.count(F.when(kept, 1)).alias("silver"),
                F.count(F.when(F.col(UNPARSED).isNull() & ~kept, 1)).alias("ruled_out"),
                F.count(F.when(kept & F.col(QUALITY_FLAGS).isNotNull(), 1)).alias("flagged"),
                F.count(F.col(tables.LATE_WATERMARK)).alias("late"),
                F.max(F.when(kept, F.unix_micros("event_time"))).alias("newest"),
                F.array_distinct(F.flatten(F.collect_list(F.when(kept & F.col("extra").isNotNull(), F.map_keys(
                    F.from_json("extra", "MAP<STRING, STRING>")))))).alias("new_fields"),
                *self.judge.totals()).collect()
            counts = _summed(groups)
            mark = self._phase("read_judge_count", started)
            evaluated = time.monotonic()
            self._looked(looked)  # a loss found with failOnDataLoss=true stops the job before this batch is written
            mark = self._phase("loss_check", mark)
            self.watermark.advance(batch_id, watermark, counts["newest"])
            self._write_all(batch_id, [
                (tables.BRONZE, rows.select(*self.bronze_columns), counts["input"]),
                (tables.SILVER, rows.where(kept).select(*self.silver_columns), counts["silver"]),
                (tables.QUALITY_CHECKS, self._checks(groups, batch_id, now), 1)])
            self._phase("write", mark)
        finally:
            rows.unpersist()
        self._remembered = self._watching.submit(self.losses.remember, batch_id)
        quality = {rule.name: [counts.get(f"checked:{rule.name}", 0), counts.get(f"failed:{rule.name}", 0)]
                   for rule in self.judge.rules}
        new_fields = counts["new_fields"]
        if new_fields:
            log.warning("batch %d: fields the envelope schema v%d does not know: %s (kept in silver.extra)",
                        batch_id, SCHEMA_VERSION, ", ".join(new_fields))
        input_rows = int(counts["input"])
        self._record(BatchRecord(
            batch_id, input_rows=input_rows if read is None else read,
            already_in_lake=0 if read is None else read - input_rows,
            silver_rows=int(counts["silver"]), quarantined=int(counts["unparsed"] + counts["ruled_out"]),
            late=int(counts["late"]), quality_quarantined=int(counts["ruled_out"]), flagged=int(counts["flagged"]),
            quality=quality, new_fields=new_fields,
            watermark=None if watermark is None else _iso(watermark), spark_ms=round((evaluated - started) * 1000),
            phases_ms=dict(self.phases),
            duration_ms=round((time.monotonic() - started) * 1000)))

    def _looked(self, looked: Future[None]) -> None:
        """The batch's look at Kafka is over; it ran after the batch before was remembered, whose error (not
        Kafka's: the watch keeps those) is raised here too."""
        looked.result()
        if self._remembered is not None:
            self._remembered.result()

    def _phase(self, name: str, since: float) -> float:
        """Adds the time since `since` to the batch's phase `name` (BatchRecord.phases_ms); now."""
        now = time.monotonic()
        self.phases[name] = self.phases.get(name, 0) + round((now - since) * 1000)
        return now

    def _checks(self, groups: list[Any], batch_id: int, now: datetime) -> DataFrame | None:
        """The batch's quality_checks rows (collection, rule, event day: judged, failed), from its counts."""
        rows = [(g["collection"], rule.name, rule.severity, g["event_date"], int(g[f"checked:{rule.name}"] or 0),
                 int(g[f"failed:{rule.name}"] or 0), batch_id, now)
                for g in groups for rule in self.judge.rules if g[f"checked:{rule.name}"]]
        if not rows:
            return None
        return self.spark.createDataFrame(rows, types.spark_ddl(tables.QUALITY_CHECKS_COLUMNS))

    def _write_all(self, batch_id: int, writes: list[tuple[str, DataFrame | None, int]]) -> None:
        """Each table's write as its own Spark job, all at once: a Delta commit is mostly the driver's
        waiting on files and the log, which the other writes' tasks fill."""
        def one(write: tuple[str, DataFrame | None, int]) -> None:
            in_pool(self.spark, LAKE_POOL)  # a new thread does not inherit the query's pool
            name, data, _ = write
            self.appender.append(data, self.settings.table_path(name), batch_id)

        writes = [w for w in writes if w[1] is not None and w[2]]
        with ThreadPoolExecutor(max_workers=max(len(writes), 1), thread_name_prefix="lake-write") as pool:
            for future in [pool.submit(one, write) for write in writes]:
                future.result()

    def _seen_coordinates(self) -> DataFrame:
        """Kafka coordinates bronze already holds: a replay into an existing lake adds only the rest."""
        if self._seen is None:
            bronze = self.settings.table_path(tables.BRONZE)
            self._seen = (self.spark.read.format("delta").load(str(bronze)).select(*tables.KAFKA_COLUMNS)
                          .persist(StorageLevel.MEMORY_AND_DISK))
            log.info("replay: %d Kafka messages already in the lake will be skipped", self._seen.count())
        return self._seen

    def _record(self, record: BatchRecord) -> None:
        """One line per batch in data/state/spark/batches.jsonl (contracts/batches.py); a batch Spark replays
        after a crash writes its line again, so readers take the last line per batch_id."""
        batches.append(self.metrics_path, record)
        for outcome in ("input_rows", "silver_rows", "quarantined", "late", "flagged"):
            metrics.STREAM_ROWS.labels(outcome.removesuffix("_rows")).inc(getattr(record, outcome))
        for rule, (checked, failed) in record.quality.items():
            metrics.QUALITY_CHECKED.labels(rule).inc(checked)
            metrics.QUALITY_FAILED.labels(rule).inc(failed)
        if record.watermark:
            metrics.STREAM_WATERMARK.set(datetime.fromisoformat(record.watermark).timestamp())
        if record.input_rows:
            log.info("batch %d: %d rows, %d to silver, %d quarantined, %d late, watermark %s, %d ms", record.batch_id,
                     record.input_rows, record.silver_rows, record.quarantined, record.late, record.watermark,
                     record.duration_ms)


def _summed(groups: list[Any]) -> dict[str, Any]:
    """The batch's counts over its (collection, event day) groups."""
    out: dict[str, Any] = {"newest": None, "new_fields": []}
    for group in groups:
        for name, value in group.asDict().items():
            if name in ("collection", "event_date"):
                continue
            if name == "newest":
                out[name] = value if out[name] is None or (value is not None and value > out[name]) else out[name]
            elif name == "new_fields":
                out[name] = sorted({*out[name], *(value or [])})
            else:
                out[name] = out.get(name, 0) + int(value or 0)
    for name in ("input", "unparsed", "silver", "ruled_out", "flagged", "late"):
        out.setdefault(name, 0)
    return out


def _iso(micros: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(micros / 1_000_000))


def start(spark: SparkSession, settings: Settings, available_now: bool = False, starting_offsets: str = "earliest",
          skip_seen: bool = False) -> Any:
    """The lake query: Kafka -> bronze, silver and quality_checks (the copies follow: lake_copies). `skip_seen`
    (replays) leaves out messages whose Kafka coordinates bronze already holds. A checkpoint of the earlier
    Python Kafka source is rewritten for Spark's first."""
    settings = for_stage(settings, "streaming")
    migrate_checkpoint(settings.spark_checkpoint)
    ensure_lake_tables(settings)
    judge = QualityJudge(tuple(map(settings.collection, settings.collections)))
    batches = BatchWriter(spark, settings, judge, skip_seen)
    writer = (
        judged(read_kafka(spark, settings, starting_offsets), settings, judge)
        .writeStream.foreachBatch(batches)
        .option("checkpointLocation", str(settings.spark_checkpoint))
        .queryName("lake")
    )
    writer = (
        writer.trigger(availableNow=True) if available_now
        else writer.trigger(processingTime=f"{settings.trigger_seconds} seconds")
    )
    if spark.sparkContext.applicationId not in _WARMED:  # once per JVM: a restarted query finds delta-spark warm
        _WARMED.add(spark.sparkContext.applicationId)
        threading.Thread(target=_warm_delta_writes, args=(spark, settings), name="delta-warm-up", daemon=True).start()
    in_pool(spark, LAKE_POOL)
    try:
        query = writer.start()
    finally:
        in_pool(spark, BACKGROUND_POOL)  # what this thread starts next is off the hot path
    _Closer.of(spark).when_ended(query, batches.close)
    return query


_WARMED: set[str] = set()  # the Spark applications whose delta-spark _warm_delta_writes has warmed


def _warm_delta_writes(spark: SparkSession, settings: Settings) -> None:
    """While the lake query's first batch reads Kafka, one row is written to a scratch Delta table and the
    hot path's tables' logs are loaded: a JVM's first Delta write loads and compiles most of delta-spark
    (measured: the first append 5.8 s, the next table's 1.4 s; the first log 4.5 s), and the first batch,
    the one every stage waits for after a restart, paid it all after its reading."""
    scratch = settings.state_dir / "spark" / "delta-warm-up"
    try:
        in_pool(spark, BACKGROUND_POOL)
        shutil.rmtree(scratch, ignore_errors=True)
        (spark.range(1).select(F.lit("warm").alias("text"), F.col("id"), F.current_timestamp().alias("at"),
                               F.lit(1).cast("decimal(18,2)").alias("amount"), F.current_date().alias("day"))
         .write.format("delta").mode("append").save(str(scratch)))
        for name in (tables.BRONZE, tables.SILVER, tables.QUALITY_CHECKS):
            spark.read.format("delta").load(str(settings.table_path(name))).schema  # noqa: B018 - loads its log
    except Exception as exc:  # noqa: BLE001 - a warm-up that fails only leaves the first batch slower
        log.debug("warming Delta up: %s", exc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _Closer(StreamingQueryListener):
    """Closes what a query's foreachBatch holds open on the driver (the loss watch's Kafka consumers and
    their threads) when the query ends, however it ends: a query restarted after a failure, or run again
    in the same process, does not leave the earlier one's clients behind. One per Spark session."""

    def __init__(self) -> None:
        super().__init__()
        self._closers: dict[str, Any] = {}

    @classmethod
    def of(cls, spark: SparkSession) -> _Closer:
        closer = getattr(spark, "_lakehouse_closer", None)
        if closer is None:
            closer = cls()
            spark.streams.addListener(closer)
            spark._lakehouse_closer = closer  # type: ignore[attr-defined]
        return closer

    def when_ended(self, query: Any, close: Any) -> None:
        # By run id: a query restarted from its checkpoint keeps its id, and the end of the run before
        # may be announced after this one has started.
        self._closers[str(query.runId)] = close
        if not query.isActive:  # it may have ended before it was registered
            self._close(str(query.runId))

    def _close(self, run_id: str) -> None:
        close = self._closers.pop(run_id, None)
        if close is not None:
            close()

    def onQueryStarted(self, event: Any) -> None:
        pass

    def onQueryProgress(self, event: Any) -> None:
        pass

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryTerminated(self, event: Any) -> None:
        self._close(str(event.runId))


MAX_FAILURES = 5  # failures in a row without a committed batch before the job gives up


class QueryFailed(LakehouseError, RuntimeError):
    pass


def ensure_lake_tables(settings: Settings) -> None:
    """Every Delta table of the lake, empty with its schema, from the job's first start; an existing one
    gets the columns it lacks (a column the spec gained, or a release's new one) before any query starts.
    A query reading a Delta table as a stream fails when the table's schema changes under it, as it would
    at the first batch's schema merge."""
    for name, schema in tables.lake_schemas(tables.attribute_columns(settings)).items():
        path = settings.table_path(name)
        if ensure_table(path, schema, lake_table_properties(name)):
            log.info("created the empty Delta table %s", path)
        elif added := add_missing_columns(path, schema):
            log.warning("added the column(s) %s to the Delta table %s (rows written before have them null)",
                        ", ".join(added), path)


def query_checkpoints(settings: Settings) -> list[Path]:
    return [settings.spark_checkpoint, *copy_checkpoints(settings).values(),
            *(settings.aggregates_checkpoint / g for g in tables.WINDOWS),
            *(revenue_checkpoint(settings, g) for g in tables.CATEGORY_WINDOWS), inventory.checkpoint(settings),
            sessions.checkpoint(settings)]


def start_derived(spark: SparkSession, settings: Settings, available_now: bool) -> list[Any]:
    """The queries over what the lake query writes: windowed aggregates, revenue by category, inventory
    alerts and customer sessions. They stream the lake's tables, which exist (empty) before any is written."""
    settings = for_stage(settings, "streaming")
    ensure_lake_tables(settings)
    return [*start_aggregates(spark, settings, available_now),
            *start_revenue_by_category(spark, settings, available_now),
            *inventory.start_inventory_alerts(spark, settings, available_now),
            *sessions.start_customer_sessions(spark, settings, available_now)]


def repair_checkpoints(settings: Settings) -> None:
    """A query killed before it planned its first batch leaves a checkpoint Spark will not start from
    (the source's log and the state folder are written before the offsets log; Spark then says
    STATE_STORE_CHECKPOINT_LOCATION_NOT_EMPTY). Such a checkpoint holds nothing that was committed
    anywhere, so it is started afresh."""
    for checkpoint in query_checkpoints(settings):
        planned = list((checkpoint / "offsets").glob("[0-9]*")) if checkpoint.exists() else []
        if checkpoint.exists() and not planned:
            log.warning("checkpoint %s has no planned batch (stopped before its first): starting it afresh",
                        checkpoint)
            shutil.rmtree(checkpoint)


def committed_batches(settings: Settings) -> int:
    return sum(len(list((c / "commits").glob("[0-9]*"))) for c in query_checkpoints(settings) if c.exists())


FIRST_BATCH_ALONE_S = 120.0  # the longest the other queries wait for the lake query's first trigger


def run(settings: Settings, available_now: bool = False, max_failures: int = MAX_FAILURES) -> None:
    """Run the lake query, its copies and the aggregates until stopped (SIGTERM/SIGINT), or with
    available_now until Kafka is drained (the lake first, then its copies, then the aggregates over what
    they wrote). A failed query is restarted with exponential backoff, its cause logged each time; after
    `max_failures` failures in a row without a committed batch the job raises with the last cause. A
    stop request lets the batch in hand finish."""
    settings = for_stage(settings, "streaming")
    # One stop flag from the first step: a SIGTERM while Spark starts is a stop too (it ended the process
    # with -15 between the wait for Kafka and the queries' loop).
    with StopSignals() as signals:
        if not _kafka_answers(settings, available_now, signals):
            return  # stopped while waiting
        reset_derived_if_old(settings, [c for c in query_checkpoints(settings) if c != settings.spark_checkpoint])
        ensure_lake_tables(settings)
        spark = build_session(settings)
        watch = loss_watch(settings)
        log.info("streaming %s -> %s (checkpoints in %s)", ",".join(settings.topics), settings.lake_path,
                 settings.spark_checkpoint.parent)
        try:
            _supervise(spark, settings, available_now, max_failures, signals, watch)
        finally:
            watch.close()
            spark.stop()


def _supervise(spark: SparkSession, settings: Settings, available_now: bool, max_failures: int,
               signals: StopSignals, watch: LossWatch) -> None:
    """Start the queries and restart them after a failure until stopped, drained or out of tries."""
    failures = 0
    while not signals.requested.is_set():
        repair_checkpoints(settings)
        committed = committed_batches(settings)
        queries: list[Any] = []
        try:
            queries.append(start(spark, settings, available_now))
            if available_now:  # each wave reads what the one before wrote
                _await(queries, signals, watch)
                if signals.requested.is_set():
                    return
                queries += start_copies(spark, settings, available_now)
                _await(queries, signals, watch)
                if signals.requested.is_set():
                    return
            else:
                _first_batch_alone(queries[0], signals)
                if signals.requested.is_set():
                    return
                queries += start_copies(spark, settings, available_now)
            queries += start_derived(spark, settings, available_now)
            _await(queries, signals, watch)
            return
        except QueryFailed as exc:
            if is_data_loss(str(exc)):
                raise KafkaDataLoss(str(exc)) from exc  # failOnDataLoss=true: stopping is what was asked
            metrics.STREAM_FAILURES.inc()
            failures = 1 if committed_batches(settings) > committed else failures + 1
            if failures >= max_failures or spark.sparkContext._jsc is None:
                raise QueryFailed(f"the streaming job gave up after {failures} failures in a row without "
                                  f"a committed batch; the last: {exc}") from exc
            delay = min(2.0 ** failures, 60.0)
            log.error("%s; restarting the queries in %.0fs (failure %d of %d in a row without a committed "
                      "batch)", exc, delay, failures, max_failures)
        finally:
            stop_queries(queries)
        signals.requested.wait(delay)


def _kafka_answers(settings: Settings, available_now: bool, signals: StopSignals) -> bool:
    """Before Spark starts: Kafka reachable and holding the topics, else a clear error now rather than Spark's
    traceback a minute later (and five restarts on a topic the producer has not created yet). A bounded run
    (available_now) reports it; the service waits for it (lakehouse/core/backoff.py), as it would for a
    broker lost on the way. False when stopped while waiting."""
    episode = AwayEpisode(log)
    while True:
        try:
            require_topics(settings, settings.topics)
            episode.over()
            return True
        except (ServerUnreachable, TopicsMissing, KafkaTransient) as exc:
            if available_now:
                raise
            metrics.STREAM_KAFKA_WAITS.inc()
            if episode.wait(exc, signals.requested):
                log.info("stopped while waiting for Kafka")
                return False


def stop_queries(queries: list[Any], grace: float = 40.0) -> None:
    """Stop the queries, each after the batch it has in hand (at most `grace` seconds), all at once: a
    dozen queries with their own triggers, waited for one after the other, took longer than a service
    manager waits (run-all gives the job 60 s)."""
    deadline = time.monotonic() + grace

    def stop(query: Any) -> None:
        try:
            while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
                time.sleep(0.2)
            if query.isActive:
                query.stop()
        except Exception as exc:  # noqa: BLE001 - a query that cannot be stopped is already gone
            log.warning("stopping %s: %s", query.name, exc)

    if queries:
        with ThreadPoolExecutor(max_workers=len(queries), thread_name_prefix="stop-query") as pool:
            list(pool.map(stop, queries))


def _await(queries: list[Any], signals: StopSignals, watch: LossWatch | None = None) -> None:
    """Until every query has finished (or a stop was asked); a failed query raises QueryFailed. Every
    LOSS_CHECK_SECONDS the data-loss watch looks at Kafka, so a loss is found while no batch runs too."""
    observed: dict[str, int] = {}
    next_check = time.monotonic() + LOSS_CHECK_SECONDS
    while any(q.isActive for q in queries) and not signals.requested.is_set():
        _raise_if_failed(queries)
        _observe(queries, observed)
        if watch is not None and time.monotonic() >= next_check:
            watch.check()
            next_check = time.monotonic() + LOSS_CHECK_SECONDS
        signals.requested.wait(0.5)
    _observe(queries, observed)
    _raise_if_failed(queries)


def _first_batch_alone(lake: Any, signals: StopSignals, longest: float = FIRST_BATCH_ALONE_S) -> None:
    """Until the lake query has run its first trigger (or `longest` seconds, or a stop): it runs alone.
    Started beside the dozen queries over the lake, each compiling its plans and opening its state, its
    first batch took 30 s for a few hundred rows after a restart, and every later stage waits for it."""
    deadline = time.monotonic() + longest
    while lake.isActive and lake.lastProgress is None and time.monotonic() < deadline:
        if signals.requested.wait(0.2):
            return
    _raise_if_failed([lake])


def _observe(queries: list[Any], observed: dict[str, int]) -> None:
    """Each query's batches since the last look, into the metrics (Spark keeps the recent ones)."""
    for query in queries:
        try:
            progresses = query.recentProgress
        except Exception:  # noqa: BLE001 - a query being stopped has no progress to give
            continue
        for progress in progresses:
            if progress.batchId <= observed.get(query.name, -1):
                continue
            observed[query.name] = progress.batchId
            metrics.STREAM_BATCH_SECONDS.labels(query.name).observe(
                (progress.durationMs or {}).get("triggerExecution", 0) / 1000)
            metrics.STREAM_QUERY_ROWS.labels(query.name).inc(progress.numInputRows or 0)
            metrics.STREAM_LAST_BATCH.labels(query.name).set(
                datetime.fromisoformat(progress.timestamp.replace("Z", "+00:00")).timestamp())


def _raise_if_failed(queries: list[Any]) -> None:
    for query in queries:
        if query.exception():
            cause = str(query.exception()).strip().splitlines()
            raise QueryFailed(f"streaming query {query.name} failed: {cause[0] if cause else query.exception()}")
