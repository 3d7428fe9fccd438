"""Kafka -> bronze / silver / quarantine Delta tables and a Parquet copy of silver.

One streaming query; each micro-batch is parsed once and split: rows that fail parsing go to the
quarantine table with a reason (the stream never stops for them), the rest to silver. Every table is
written idempotently per batch (see lakehouse/adapters/delta.py), so a restart after a kill -9 reflects every Kafka
offset exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.adapters.delta import LakeTable, append_once, conform, ensure_table, write_parquet_once, writer_app_id
from lakehouse.adapters.kafka import require_broker
from lakehouse.contracts import batches, tables, types
from lakehouse.contracts.batches import BatchRecord
from lakehouse.contracts.events import (
    ENVELOPE_FIELD_NAMES,
    ENVELOPE_FIELDS,
    OPERATIONS,
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
)
from lakehouse.core import metrics
from lakehouse.core.collections import MONEY_COLUMNS
from lakehouse.core.config import Settings
from lakehouse.core.errors import ConfigError, LakehouseError
from lakehouse.core.rules import QUALITY_FLAGS
from lakehouse.core.stopping import StopSignals
from streaming import inventory, sessions
from streaming.aggregates import revenue_checkpoint, start_aggregates, start_revenue_by_category
from streaming.enrichment import ORDERS, ReferenceState
from streaming.kafka_source import KafkaPyDataSource
from streaming.quality import QualityJudge, Verdict
from streaming.udfs import money_columns
from streaming.watermark import WatermarkTracker

log = logging.getLogger(__name__)

ENVELOPE_DDL = types.spark_ddl(ENVELOPE_FIELDS)


def build_session(settings: Settings) -> SparkSession:
    # Python workers (and the streaming source's runner, which reads only the environment) must run
    # this interpreter, which has pyspark, pyarrow and the Kafka client installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if settings.spark_master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    _jvm_ignores_sigterm()
    spark = (
        SparkSession.builder.master(settings.spark_master)
        .appName("lakehouse-streaming")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    spark.dataSource.register(KafkaPyDataSource)
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
    reader = (
        spark.readStream.format(settings.kafka_source_format)
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", ",".join(settings.topics))
        .option("startingOffsets", starting_offsets)
        .option("failOnDataLoss", str(settings.kafka_fail_on_data_loss).lower())
    )
    if settings.kafka_source_format == "kafka_py":
        reader = reader.option("dataLossLog", str(settings.data_loss_log))
    if settings.max_rows_per_batch:
        reader = reader.option("maxOffsetsPerTrigger", str(settings.max_rows_per_batch))
    return reader.load()


def _quarantine_reason(event: Column, fields: Column, raw: Column) -> Column:
    """Why a message cannot become a silver row; null when it can. `fields` is the message as a
    map of field -> raw JSON text, to tell a missing field from one of the wrong type."""
    present = [(name, fields[name].isNotNull() & (fields[name] != "null")) for name, _ in ENVELOPE_FIELDS]
    mistyped = F.concat_ws(", ", *[F.when(is_there & event[name].isNull(), F.lit(name)) for name, is_there in present])
    missing = F.concat_ws(", ", *[F.when(event[f].isNull(), F.lit(f)) for f in REQUIRED_FIELDS])
    return (
        F.when(raw.isNull() | (F.trim(raw) == ""), F.lit("empty message value"))
        .when(F.try_parse_json(raw).isNull(), F.lit("malformed JSON"))
        .when(fields.isNull(), F.lit("not a JSON object"))
        .when(F.coalesce(event["schema_version"], F.lit(0)) > SCHEMA_VERSION,
              F.concat(F.lit("unsupported schema_version "), event["schema_version"].cast("string")))
        .when(mistyped != "",
              F.concat(F.lit(f"field(s) of the wrong type for envelope schema v{SCHEMA_VERSION}: "), mistyped))
        .when(missing != "", F.concat(F.lit("missing required field(s): "), missing))
        .when(~event["op"].isin(*OPERATIONS), F.concat(F.lit("unknown op "), event["op"]))
    )


def _event_time(settings: Settings, document: Column) -> Column:
    cluster_time = F.timestamp_seconds(F.col("event.cluster_time_s"))
    if settings.event_time_source == "cluster_time":
        return cluster_time
    if settings.event_time_source == "order_updated_at":
        return F.coalesce(F.to_timestamp(F.get_json_object(document, "$.updated_at['$date']")), cluster_time)
    raise ConfigError(f"EVENT_TIME must be cluster_time or order_updated_at, not {settings.event_time_source!r}")


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
        F.from_json(value, ENVELOPE_DDL, {"mode": "PERMISSIVE"}).alias("event"),
        F.from_json(value, "MAP<STRING, STRING>", {"mode": "PERMISSIVE"}).alias("fields"),
    )
    known = F.array(*[F.lit(name) for name in ENVELOPE_FIELD_NAMES])
    unknown = F.map_filter("fields", lambda k, _: ~F.array_contains(known, k))
    document = F.coalesce(F.col("event.full_document"), F.col("event.before_document"))
    collection = F.col("event.collection")
    attributes = parsed.select(
        "*",
        _quarantine_reason(F.col("event"), F.col("fields"), F.col("raw_value")).alias("quarantine_reason"),
        F.when(F.size(unknown) > 0, F.to_json(unknown)).alias("extra"),
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


class BatchWriter:
    """The foreachBatch function: one Spark evaluation per batch, split in Arrow, written once."""

    def __init__(self, settings: Settings, skip_seen: bool = False) -> None:
        self.settings = settings
        self.skip_seen = skip_seen
        self._seen: pa.Array | None = None
        self.app_id = writer_app_id(settings.spark_checkpoint)
        self.metrics_path = settings.batch_metrics
        self.watermark = WatermarkTracker(settings.state_dir / "spark" / "watermark.json", settings.watermark_delay)
        # The lake's schemas for the spec the query was built with (parse), fixed for the query's life.
        self.schemas = tables.lake_schemas(tables.attribute_columns(settings))
        self.judge = QualityJudge(tuple(map(settings.collection, settings.collections)),
                                  settings.table_path(tables.SILVER))
        orders = settings.collection(ORDERS) if ORDERS in settings.collections else None
        self.references = ReferenceState(settings.table_path(tables.SILVER), orders is not None and bool(
            orders.money) and "customer_id" in dict(orders.columns))

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        # Materialise first, always: Spark rejects a batch function that skips evaluating its input.
        batch = batch_df.toArrow()
        evaluated = time.monotonic()
        collected_bytes = batch.nbytes
        now = pa.scalar(int(time.time() * 1_000_000), pa.timestamp("us", tz="UTC"))
        input_rows = batch.num_rows
        if self.skip_seen:
            batch = batch.filter(pc.invert(pc.is_in(_coordinates(batch), value_set=self._seen_coordinates())))
        batch = batch.append_column("batch_id", pa.array([batch_id] * batch.num_rows, pa.int64()))
        batch = batch.append_column("ingested_at", pa.array([now] * batch.num_rows))
        bad = pc.is_valid(batch["quarantine_reason"])
        schemas = self.schemas
        bronze = conform(batch, schemas[tables.BRONZE])
        parsed = batch.filter(pc.invert(bad))
        silver = self._silver(parsed)
        verdict = self.judge.judge(silver, batch_id)
        ruled_out = pc.is_valid(verdict.quarantine_reason)
        broke_rules = parsed.filter(ruled_out)
        broke_rules = broke_rules.set_column(broke_rules.schema.get_field_index("quarantine_reason"),
                                             "quarantine_reason", verdict.quarantine_reason.filter(ruled_out))
        quarantine = pa.concat_tables([conform(batch.filter(bad), schemas[tables.QUARANTINE]),
                                       conform(broke_rules, schemas[tables.QUARANTINE])])
        if QUALITY_FLAGS in silver.column_names:
            silver = silver.set_column(silver.schema.get_field_index(QUALITY_FLAGS), QUALITY_FLAGS, verdict.flags)
        silver = conform(silver.filter(pc.invert(ruled_out)), schemas[tables.SILVER])
        watermark, late = self._late(silver, batch_id)
        late = conform(late, schemas[tables.LATE_EVENTS])
        checks = conform(_quality_checks(verdict, batch_id, now), schemas[tables.QUALITY_CHECKS])
        lines = self.references.order_lines(silver)
        lines = conform(lines.append_column("batch_id", pa.array([batch_id] * lines.num_rows, pa.int64()))
                        .append_column("ingested_at", pa.array([now] * lines.num_rows)), schemas[tables.ORDER_LINES])

        outputs = ((tables.BRONZE, bronze), (tables.SILVER, silver), (tables.QUARANTINE, quarantine),
                   (tables.LATE_EVENTS, late), (tables.QUALITY_CHECKS, checks), (tables.ORDER_LINES, lines))
        for name, data in outputs:
            if data.num_rows:
                append_once(self.settings.table_path(name), data, self.app_id, batch_id)
        write_parquet_once(self.settings.parquet_silver_path, silver, self.app_id, batch_id, "event_date")
        write_parquet_once(self.settings.parquet_path(tables.ORDER_LINES), lines, self.app_id, batch_id, "event_date")
        self.judge.remember(silver)
        flagged = silver.num_rows - silver[QUALITY_FLAGS].null_count if QUALITY_FLAGS in silver.column_names else 0
        new_fields = sorted({key for text in silver["extra"].drop_null().to_pylist() for key in json.loads(text)})
        if new_fields:
            log.warning("batch %d: fields the envelope schema v%d does not know: %s (kept in silver.extra)",
                        batch_id, SCHEMA_VERSION, ", ".join(new_fields))
        self._record(BatchRecord(
            batch_id, input_rows=input_rows, already_in_lake=input_rows - batch.num_rows, silver_rows=silver.num_rows,
            quarantined=quarantine.num_rows, late=late.num_rows,
            quality_quarantined=int(pc.sum(ruled_out).as_py() or 0), flagged=flagged, quality=verdict.totals(),
            new_fields=new_fields, collected_bytes=collected_bytes,
            watermark=None if watermark is None else _iso(watermark), spark_ms=round((evaluated - started) * 1000),
            duration_ms=round((time.monotonic() - started) * 1000)))

    def _seen_coordinates(self) -> pa.Array:
        """Kafka coordinates bronze already holds: a replay into an existing lake adds only the rest."""
        if self._seen is None:
            bronze = self.settings.table_path(tables.BRONZE)
            table = LakeTable.open(bronze)
            self._seen = (pa.array([], pa.string()) if table is None
                          else _coordinates(table.read(list(tables.KAFKA_COLUMNS))))
            log.info("replay: %d Kafka messages already in the lake will be skipped", len(self._seen))
        return self._seen

    def _late(self, silver: pa.Table, batch_id: int) -> tuple[int | None, pa.Table]:
        """Rows older than the watermark in force: the windowed aggregates will not count them, so
        they are recorded here (they stay in silver like every other row)."""
        watermark = self.watermark.for_batch(batch_id)
        micros = pc.cast(silver["event_time"], pa.int64())
        self.watermark.advance(batch_id, watermark, pc.max(micros).as_py())
        late = silver.filter(pc.less(micros, watermark)) if watermark is not None else silver.slice(0, 0)
        # The caller keeps late_events' columns (lakehouse/contracts/tables.LATE_EVENTS_COLUMNS).
        return watermark, late.append_column(
            "watermark", pa.array([watermark] * late.num_rows, pa.timestamp("us", tz="UTC")))

    def _silver(self, rows: pa.Table) -> pa.Table:
        event = rows["event"].combine_chunks() if rows.num_rows else None
        columns: dict[str, Any] = {}
        for name, _ in ENVELOPE_FIELDS:
            columns[name] = (
                pc.struct_field(event, name) if event is not None
                else pa.array([], rows.schema.field("event").type.field(name).type)
            )
        for name in self.schemas[tables.SILVER].names[len(ENVELOPE_FIELDS):]:
            if name == QUALITY_FLAGS:
                columns[name] = pa.nulls(rows.num_rows, pa.string())  # set by the quality rules
                continue
            columns[name] = pc.cast(rows["event_time"], pa.date32()) if name == "event_date" else rows[name]
        return pa.table(columns)

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


def _quality_checks(verdict: Verdict, batch_id: int, now: pa.Scalar) -> pa.Table:
    """The batch's rows of the quality_checks table: per collection, rule and event day."""
    keys = list(verdict.counts)
    return pa.table({
        "collection": pa.array([k[0] for k in keys], pa.string()),
        "rule": pa.array([k[1] for k in keys], pa.string()),
        "severity": pa.array([k[2] for k in keys], pa.string()),
        "event_date": pa.array([k[3] for k in keys], pa.date32()),
        "checked": pa.array([verdict.counts[k][0] for k in keys], pa.int64()),
        "failed": pa.array([verdict.counts[k][1] for k in keys], pa.int64()),
        "batch_id": pa.array([batch_id] * len(keys), pa.int64()), "ingested_at": pa.array([now] * len(keys)),
    })


def _coordinates(rows: pa.Table) -> pa.Array:
    """topic:partition:offset per row."""
    return pc.binary_join_element_wise(
        rows["kafka_topic"], pc.cast(rows["kafka_partition"], pa.string()), pc.cast(rows["kafka_offset"], pa.string()),
        ":",
    ).combine_chunks() if rows.num_rows else pa.array([], pa.string())


def _iso(micros: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(micros / 1_000_000))


def start(spark: SparkSession, settings: Settings, available_now: bool = False, starting_offsets: str = "earliest",
          skip_seen: bool = False) -> Any:
    """The lake query: Kafka -> bronze, silver, quarantine, late events, Parquet copy. `skip_seen`
    (replays) leaves out messages whose Kafka coordinates bronze already holds."""
    writer = (
        parse(read_kafka(spark, settings, starting_offsets), settings)
        .writeStream.foreachBatch(BatchWriter(settings, skip_seen))
        .option("checkpointLocation", str(settings.spark_checkpoint))
        .queryName("lake")
    )
    writer = (
        writer.trigger(availableNow=True) if available_now
        else writer.trigger(processingTime=f"{settings.trigger_seconds} seconds")
    )
    return writer.start()


MAX_FAILURES = 5  # failures in a row without a committed batch before the job gives up


class QueryFailed(LakehouseError, RuntimeError):
    pass


def ensure_lake_tables(settings: Settings) -> None:
    """Every Delta table of the lake, empty with its schema, from the job's first start."""
    for name, schema in tables.lake_schemas(tables.attribute_columns(settings)).items():
        if ensure_table(settings.table_path(name), schema):
            log.info("created the empty Delta table %s", settings.table_path(name))


def query_checkpoints(settings: Settings) -> list[Path]:
    return [settings.spark_checkpoint, *(settings.aggregates_checkpoint / g for g in tables.WINDOWS),
            *(revenue_checkpoint(settings, g) for g in tables.CATEGORY_WINDOWS), inventory.checkpoint(settings),
            sessions.checkpoint(settings)]


def start_derived(spark: SparkSession, settings: Settings, available_now: bool) -> list[Any]:
    """The queries over what the lake query writes: windowed aggregates, revenue by category, inventory
    alerts and customer sessions."""
    return [*start_aggregates(spark, settings, available_now),
            *start_revenue_by_category(spark, settings, available_now),
            *inventory.start_inventory_alerts(spark, settings, available_now),
            *sessions.start_customer_sessions(spark, settings, available_now)]


def repair_checkpoints(settings: Settings) -> None:
    """A query killed before it planned its first batch leaves a checkpoint Spark will not start from
    (the file source's log and the state folder are written before the offsets log; Spark then says
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


def run(settings: Settings, available_now: bool = False, max_failures: int = MAX_FAILURES) -> None:
    """Run the lake query and the aggregates until stopped (SIGTERM/SIGINT), or with available_now
    until Kafka is drained (the lake first, then the aggregates over what it wrote). A failed query is
    restarted with exponential backoff, its cause logged each time; after `max_failures` failures in a
    row without a committed batch the job raises with the last cause. A stop request lets the batch in
    hand finish."""
    require_broker(settings)  # a clear error now, rather than Spark's traceback a minute later
    ensure_lake_tables(settings)
    spark = build_session(settings)
    log.info("streaming %s -> %s (checkpoints in %s)", ",".join(settings.topics), settings.lake_path,
             settings.spark_checkpoint.parent)
    failures = 0
    with StopSignals() as signals:
        try:
            while not signals.requested.is_set():
                repair_checkpoints(settings)
                committed = committed_batches(settings)
                queries: list[Any] = []
                try:
                    queries.append(start(spark, settings, available_now))
                    if available_now:
                        _await(queries, signals)
                        if signals.requested.is_set():
                            return
                    queries += start_derived(spark, settings, available_now)
                    _await(queries, signals)
                    return
                except QueryFailed as exc:
                    metrics.STREAM_FAILURES.inc()
                    failures = 1 if committed_batches(settings) > committed else failures + 1
                    if failures >= max_failures or spark.sparkContext._jsc is None:
                        raise QueryFailed(f"the streaming job gave up after {failures} failures in a row without "
                                           f"a committed batch; the last: {exc}") from exc
                    delay = min(2.0 ** failures, 60.0)
                    log.error("%s; restarting the queries in %.0fs (failure %d of %d in a row without a committed "
                              "batch)", exc, delay, failures, max_failures)
                finally:
                    _stop(queries)
                signals.requested.wait(delay)
        finally:
            spark.stop()


def _stop(queries: list[Any], grace: float = 60.0) -> None:
    """Stop the queries, each after the batch it has in hand (at most `grace` seconds)."""
    deadline = time.monotonic() + grace
    for query in queries:
        try:
            while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
                time.sleep(0.2)
            if query.isActive:
                query.stop()
        except Exception as exc:  # noqa: BLE001 - a query that cannot be stopped is already gone
            log.warning("stopping %s: %s", query.name, exc)


def _await(queries: list[Any], signals: StopSignals) -> None:
    """Until every query has finished (or a stop was asked); a failed query raises QueryFailed."""
    observed: dict[str, int] = {}
    while any(q.isActive for q in queries) and not signals.requested.is_set():
        _raise_if_failed(queries)
        _observe(queries, observed)
        signals.requested.wait(0.5)
    _observe(queries, observed)
    _raise_if_failed(queries)


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
