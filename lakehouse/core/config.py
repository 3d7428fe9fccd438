"""The pipeline's configuration, in one place.

Every component is reached only through these settings, so a real MongoDB replica set, a Kafka
cluster or a Spark cluster drop in by changing environment variables (or CLI options, which
override them). Defaults are loopback addresses and folders under the current directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lakehouse.core.collections import DEFAULT_SPEC, CollectionSpec, CollectionsSpec, load_spec
from lakehouse.core.errors import ConfigError, redact

# Each setting's environment variable: the one place that names them.
ENV_NAMES = {
    "mongo_uri": "MONGO_URI",
    "mongo_db": "MONGO_DB",
    "collections": "COLLECTIONS",
    "collections_spec": "COLLECTIONS_SPEC",
    "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "topic_prefix": "TOPIC_PREFIX",
    "kafka_partitions": "KAFKA_PARTITIONS",
    "kafka_replication_factor": "KAFKA_REPLICATION_FACTOR",
    "spark_master": "SPARK_MASTER",
    "lake_path": "LAKE_PATH",
    "warehouse_path": "WAREHOUSE_PATH",
    "state_dir": "STATE_DIR",
    "stack_dir": "STACK_DIR",
    "max_rows_per_batch": "MAX_ROWS_PER_BATCH",
    "trigger_seconds": "TRIGGER_SECONDS",
    "high_value_thresholds": "HIGH_VALUE_THRESHOLDS",
    "watermark_delay": "WATERMARK_DELAY",
    "event_time_source": "EVENT_TIME",
    "kafka_fail_on_data_loss": "KAFKA_FAIL_ON_DATA_LOSS",
    "kafka_client": "KAFKA_CLIENT",
    "inventory_low": "INVENTORY_LOW",
    "inventory_critical": "INVENTORY_CRITICAL",
    "session_gap": "SESSION_GAP",
    "metrics_host": "METRICS_HOST",
    "producer_metrics_port": "PRODUCER_METRICS_PORT",
    "streaming_metrics_port": "STREAMING_METRICS_PORT",
    "loader_metrics_port": "LOADER_METRICS_PORT",
    "monitor_metrics_port": "MONITOR_METRICS_PORT",
    "prometheus_port": "PROMETHEUS_PORT",
}
_PATHS = {"lake_path", "warehouse_path", "state_dir", "stack_dir", "collections_spec"}
_PORTS = {"producer_metrics_port", "streaming_metrics_port", "loader_metrics_port", "monitor_metrics_port",
          "prometheus_port"}
_INTS = {"kafka_partitions", "kafka_replication_factor", "max_rows_per_batch", "inventory_low", "inventory_critical",
         *_PORTS}
_BOOLS = {"kafka_fail_on_data_loss"}
KAFKA_CLIENTS = ("confluent", "kafka-python")
_MONGO_DB_NAME = re.compile(r"[^/\\. \"$*<>:|?]{1,63}")
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,119}")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_INTERVAL = re.compile(r"[1-9][0-9]* (second|minute|hour|day)s?")


def _parse(name: str, raw: str) -> object:
    if name == "collections":
        names = tuple(part.strip() for part in raw.split(",") if part.strip())
        if not names:
            raise ConfigError("COLLECTIONS names no collection; give e.g. COLLECTIONS=orders,customers (or leave it "
                              "unset to capture every collection collections.toml describes)")
        return names
    if name in _PATHS:
        return Path(raw).resolve()
    if name in _INTS:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{ENV_NAMES[name]}={raw!r} is not a whole number") from None
    if name == "trigger_seconds":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{ENV_NAMES[name]}={raw!r} is not a number of seconds") from None
    if name in _BOOLS:
        if raw.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{ENV_NAMES[name]}={raw!r} is not true or false")
        return raw.strip().lower() in ("true", "1", "yes")
    return raw


@dataclass(frozen=True)
class Settings:
    mongo_uri: str = "mongodb://127.0.0.1:27017/"
    mongo_db: str = "shop"
    # The captured collections: every one collections.toml describes, unless COLLECTIONS names some.
    collections: tuple[str, ...] = ()
    collections_spec: Path = DEFAULT_SPEC
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "cdc"
    kafka_partitions: int = 3
    # Replicas of each topic the pipeline creates; 0 leaves it to the broker's default.replication.factor
    # (1 on the embedded broker, 3 on the embedded cluster).
    kafka_replication_factor: int = 0
    spark_master: str = "local[2]"
    lake_path: Path = field(default_factory=lambda: Path("data/lake").resolve())
    warehouse_path: Path = field(default_factory=lambda: Path("data/warehouse.duckdb").resolve())
    state_dir: Path = field(default_factory=lambda: Path("data/state").resolve())
    stack_dir: Path = field(default_factory=lambda: Path(".stack").resolve())
    max_rows_per_batch: int = 20_000
    trigger_seconds: float = 2.0
    # Amount at or above which an order is high value, per currency ("default" for the rest).
    high_value_thresholds: str = "USD:1000,EUR:900,GBP:800,default:1000"
    # How long after an event's time it may still arrive and count in the windowed aggregates.
    watermark_delay: str = "10 minutes"
    # Event time: the change's cluster time, or the order document's updated_at.
    event_time_source: str = "cluster_time"
    # When Kafka no longer holds records the streaming job read (or planned to), stop the job (true, as
    # Spark's failOnDataLoss) or record the loss and go on, leaving the repair to reconcile (false).
    kafka_fail_on_data_loss: bool = False
    # The producer's Kafka client: "kafka-python" (pure Python) or "confluent" (librdkafka, its I/O off the
    # GIL). Both are tested against the broker; with the change stream read ahead they capture at the same
    # rate here (bench/producer_bench.py, README), so the default is the one the fault runs have proven.
    kafka_client: str = "kafka-python"
    # Inventory alerts: a product's stock at or under `low` is low, at or under `critical` critical, 0 out of stock.
    inventory_low: int = 20
    inventory_critical: int = 5
    # Customer sessions: a customer's order changes further apart than this start a new session.
    session_gap: str = "30 minutes"
    # Each long-running service serves Prometheus metrics at http://METRICS_HOST:<its port>/metrics (0: off);
    # the monitor (`lakehouse metrics --serve`) serves lag, freshness and the last reconcile. Loopback by
    # default; a container sets METRICS_HOST=0.0.0.0 so Prometheus in another container can scrape it.
    metrics_host: str = "127.0.0.1"
    producer_metrics_port: int = 9101
    streaming_metrics_port: int = 9102
    loader_metrics_port: int = 9103
    monitor_metrics_port: int = 9108
    # The Prometheus server infra/servers.py starts (`make monitoring`), scraping the ports above.
    prometheus_port: int = 9090

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from environment variables (ENV_NAMES); keyword overrides (CLI options) win."""
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = os.environ.get(ENV_NAMES[f.name])
            if raw not in (None, ""):
                values[f.name] = _parse(f.name, raw)
        values.update({k: _parse(k, v) if isinstance(v, str) else v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        """Refuse, where they enter, values a server or Spark would refuse later with a traceback."""
        if not self.collections:
            object.__setattr__(self, "collections", tuple(self.spec.collections))  # may raise SpecError
        problems = [p for p in (self._uri_problem(), *self._name_problems(), *self._number_problems(),
                                *self._path_problems(), self._client_problem()) if p]
        if problems:
            raise ConfigError("; ".join(problems))

    def _client_problem(self) -> str | None:
        if self.kafka_client in KAFKA_CLIENTS:
            return None
        return f"KAFKA_CLIENT={self.kafka_client!r} is not a Kafka client this pipeline has; give one of " + \
            ", ".join(KAFKA_CLIENTS)

    def _uri_problem(self) -> str | None:
        from pymongo.errors import ConfigurationError
        from pymongo.uri_parser import parse_uri

        try:
            if not self.mongo_uri.startswith("mongodb+srv://"):  # an SRV URI is resolved in DNS: left to the driver
                parse_uri(self.mongo_uri, validate=True)
        except (ConfigurationError, ValueError) as exc:
            return f"MONGO_URI={redact(self.mongo_uri)!r} is not a MongoDB URI ({exc}); e.g. mongodb://127.0.0.1:27017/"
        for server in self.kafka_bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                return (f"KAFKA_BOOTSTRAP_SERVERS={self.kafka_bootstrap_servers!r}: {server.strip()!r} is not "
                        "host:port (e.g. 127.0.0.1:9092)")
        return None

    def _name_problems(self) -> list[str]:
        problems = []
        if not _MONGO_DB_NAME.fullmatch(self.mongo_db):
            problems.append(f"MONGO_DB={self.mongo_db!r} is not a database name MongoDB accepts (1-63 characters, "
                            "none of / \\ . \" $ * < > : | ? or spaces)")
        if not self.collections:
            problems.append(f"{self.collections_spec} describes no collection, and COLLECTIONS names none")
        for name in self.collections:
            if not _COLLECTION_NAME.fullmatch(name) or name.startswith("system."):
                problems.append(f"COLLECTIONS: {name!r} is not a collection this pipeline can capture (letters, "
                                "digits, _ . - only; not system.*)")
        if not problems:
            owners: dict[str, str] = {}
            for name in self.collections:
                spec = self.collection(name)
                for table in (spec.table, spec.changes, spec.history):
                    if owners.setdefault(table, name) != name:
                        problems.append(f"COLLECTIONS: {owners[table]!r} and {name!r} would both be the warehouse "
                                        f"table {table!r}; describe one of them in {self.collections_spec.name} with "
                                        "its own table name")
        for topic in () if problems else (*self.topics, self.dead_letter_topic):
            if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
                problems.append(f"the Kafka topic {topic!r} (TOPIC_PREFIX.MONGO_DB.collection) is not a name Kafka "
                                "accepts (letters, digits, . _ - only, at most 249)")
        return problems

    def _number_problems(self) -> list[str]:
        checks = (("kafka_partitions", self.kafka_partitions >= 1),
                  ("max_rows_per_batch", self.max_rows_per_batch >= 1),
                  ("trigger_seconds", 0 < self.trigger_seconds < 86_400))
        problems = [f"{ENV_NAMES[name]}={getattr(self, name)!r} must be a positive number"
                    for name, ok in checks if not ok]
        if self.kafka_replication_factor < 0:
            problems.append(f"KAFKA_REPLICATION_FACTOR={self.kafka_replication_factor!r} must be 1 or more, or 0 for "
                            "the broker's default.replication.factor")
        problems += [f"{ENV_NAMES[name]}={getattr(self, name)!r} is not a TCP port (1-65535, or 0 for none)"
                     for name in sorted(_PORTS) if not 0 <= getattr(self, name) < 65536]
        if not 0 <= self.inventory_critical < self.inventory_low:
            problems.append(f"INVENTORY_CRITICAL={self.inventory_critical} and INVENTORY_LOW={self.inventory_low}: "
                            "give 0 <= critical < low (e.g. 5 and 20)")
        for name in ("session_gap", "watermark_delay"):
            if not _INTERVAL.fullmatch(getattr(self, name)):
                problems.append(f"{ENV_NAMES[name]}={getattr(self, name)!r} is not a duration Spark reads; give e.g. "
                                "'30 minutes' or '45 seconds'")
        return problems

    def _path_problems(self) -> list[str]:
        """A folder setting whose path runs through a regular file can never be created."""
        problems = []
        for name, folder in (("lake_path", self.lake_path), ("warehouse_path", self.warehouse_path.parent),
                             ("state_dir", self.state_dir), ("stack_dir", self.stack_dir)):
            blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
            if blocking is not None:
                problems.append(f"{ENV_NAMES[name]}={getattr(self, name)} goes through {blocking}, which is a "
                                "file, not a folder; point it somewhere else")
        if self.warehouse_path.is_dir():
            problems.append(f"WAREHOUSE_PATH={self.warehouse_path} is a folder; give the DuckDB file's path")
        return problems

    @property
    def spec(self) -> CollectionsSpec:
        """collections.toml, read (again when it changed) and checked."""
        try:
            mtime = self.collections_spec.stat().st_mtime_ns
        except OSError:
            mtime = 0
        return load_spec(self.collections_spec, mtime)

    def collection(self, name: str) -> CollectionSpec:
        return self.spec.get(name)

    def to_env(self) -> dict[str, str]:
        """The same settings as environment variables, for the processes run-all starts."""
        return {
            ENV_NAMES[f.name]: ",".join(v) if isinstance(v := getattr(self, f.name), tuple)
            else str(v).lower() if isinstance(v, bool) else str(v)
            for f in dataclasses.fields(self)
        }

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # Names derived from the settings, so no module spells a topic or path on its own.
    def topic_for(self, collection: str) -> str:
        return f"{self.topic_prefix}.{self.mongo_db}.{collection}"

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(self.topic_for(c) for c in self.collections)

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.{self.mongo_db}.dead_letter"

    @property
    def producer_checkpoint(self) -> Path:
        return self.state_dir / "producer" / "resume_token.json"

    @property
    def producer_lifecycle(self) -> Path:
        """The last collection/database lifecycle event the producer saw (it writes, status reads)."""
        return self.state_dir / "producer" / "lifecycle.json"

    @property
    def spark_checkpoint(self) -> Path:
        return self.state_dir / "spark" / "lake"

    def table_path(self, name: str) -> Path:
        """Delta tables of the lake (bronze, silver, quarantine)."""
        return self.lake_path / "delta" / name

    @property
    def batch_metrics(self) -> Path:
        """The lake query's per-batch JSON lines (streaming/job.py writes, status and replay read)."""
        return self.state_dir / "spark" / "batches.jsonl"

    @property
    def load_metrics(self) -> Path:
        """The loader's per-load JSON lines: when each load's transaction began and committed (freshness)."""
        return self.state_dir / "warehouse" / "loads.jsonl"

    @property
    def data_loss_log(self) -> Path:
        """Losses of Kafka data the streaming source found (JSON lines; status and metrics read it)."""
        return self.state_dir / "spark" / "data_loss.jsonl"

    @property
    def reconcile_state(self) -> Path:
        """The last reconcile's outcome (lakehouse/app/reconcile.py writes, status and metrics read)."""
        return self.state_dir / "reconcile" / "last.json"

    @property
    def aggregates_checkpoint(self) -> Path:
        return self.state_dir / "spark" / "aggregates"

    @property
    def parquet_silver_path(self) -> Path:
        return self.lake_path / "parquet" / "silver"

    def parquet_path(self, name: str) -> Path:
        """The Parquet copy of a lake table that a streaming query reads as its source."""
        return self.lake_path / "parquet" / name

    def query_checkpoint(self, name: str) -> Path:
        """The checkpoint of a streaming query over the lake (the aggregates, alerts, sessions)."""
        return self.state_dir / "spark" / name

    def metrics_port(self, service: str) -> int:
        """The port a service (lakehouse.core.metrics.SERVICES) serves its metrics on; 0 when it serves none."""
        return int(getattr(self, f"{service}_metrics_port"))

    @property
    def mongo_address(self) -> tuple[str, int]:
        parts = urlsplit(self.mongo_uri)
        host = (parts.netloc.rsplit("@", 1)[-1].split(",")[0]) or "127.0.0.1:27017"
        name, _, port = host.partition(":")
        return name, int(port or 27017)

    @property
    def kafka_address(self) -> tuple[str, int]:
        first = self.kafka_bootstrap_servers.split(",")[0].strip()
        name, _, port = first.rpartition(":")
        return name or "127.0.0.1", int(port or 9092)
