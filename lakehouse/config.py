"""The pipeline's configuration, in one place.

Every component is reached only through these settings, so a real MongoDB replica set, a Kafka
cluster or a Spark cluster drop in by changing environment variables (or CLI options, which
override them). Defaults are loopback addresses and folders under the current directory.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# Each setting's environment variable: the one place that names them.
ENV_NAMES = {
    "mongo_uri": "MONGO_URI",
    "mongo_db": "MONGO_DB",
    "collections": "COLLECTIONS",
    "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "topic_prefix": "TOPIC_PREFIX",
    "kafka_partitions": "KAFKA_PARTITIONS",
    "kafka_replication_factor": "KAFKA_REPLICATION_FACTOR",
    "spark_master": "SPARK_MASTER",
    "kafka_source_format": "KAFKA_SOURCE_FORMAT",
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
}
_PATHS = {"lake_path", "warehouse_path", "state_dir", "stack_dir"}
_INTS = {"kafka_partitions", "kafka_replication_factor", "max_rows_per_batch"}
_BOOLS = {"kafka_fail_on_data_loss"}


def _parse(name: str, raw: str) -> object:
    if name == "collections":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if name in _PATHS:
        return Path(raw).resolve()
    if name in _INTS:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{ENV_NAMES[name]}={raw!r} is not a whole number") from None
    if name == "trigger_seconds":
        return float(raw)
    if name in _BOOLS:
        if raw.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{ENV_NAMES[name]}={raw!r} is not true or false")
        return raw.strip().lower() in ("true", "1", "yes")
    return raw


@dataclass(frozen=True)
class Settings:
    mongo_uri: str = "mongodb://127.0.0.1:27017/"
    mongo_db: str = "shop"
    collections: tuple[str, ...] = ("orders",)
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "cdc"
    kafka_partitions: int = 3
    kafka_replication_factor: int = 1
    spark_master: str = "local[2]"
    # "kafka_py" is the jar-free Python source; "kafka" is Spark's own (needs spark-sql-kafka jars).
    kafka_source_format: str = "kafka_py"
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
    def data_loss_log(self) -> Path:
        """Losses of Kafka data the streaming source found (JSON lines; status and metrics read it)."""
        return self.state_dir / "spark" / "data_loss.jsonl"

    @property
    def reconcile_state(self) -> Path:
        """The last reconcile's outcome (warehouse/reconcile.py writes, status and metrics read)."""
        return self.state_dir / "reconcile" / "last.json"

    @property
    def aggregates_checkpoint(self) -> Path:
        return self.state_dir / "spark" / "aggregates"

    @property
    def parquet_silver_path(self) -> Path:
        return self.lake_path / "parquet" / "silver"

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
