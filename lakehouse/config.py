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


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


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

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from LAKEHOUSE-style env vars; keyword overrides (e.g. CLI options) win."""
        values: dict[str, object] = {
            "mongo_uri": _env("MONGO_URI", cls.mongo_uri),
            "mongo_db": _env("MONGO_DB", cls.mongo_db),
            "collections": _csv(_env("COLLECTIONS", ",".join(cls.collections))),
            "kafka_bootstrap_servers": _env("KAFKA_BOOTSTRAP_SERVERS", cls.kafka_bootstrap_servers),
            "topic_prefix": _env("TOPIC_PREFIX", cls.topic_prefix),
            "kafka_partitions": int(_env("KAFKA_PARTITIONS", str(cls.kafka_partitions))),
            "kafka_replication_factor": int(
                _env("KAFKA_REPLICATION_FACTOR", str(cls.kafka_replication_factor))
            ),
            "spark_master": _env("SPARK_MASTER", cls.spark_master),
            "kafka_source_format": _env("KAFKA_SOURCE_FORMAT", cls.kafka_source_format),
            "lake_path": Path(_env("LAKE_PATH", "data/lake")).resolve(),
            "warehouse_path": Path(_env("WAREHOUSE_PATH", "data/warehouse.duckdb")).resolve(),
            "state_dir": Path(_env("STATE_DIR", "data/state")).resolve(),
            "stack_dir": Path(_env("STACK_DIR", ".stack")).resolve(),
            "max_rows_per_batch": int(_env("MAX_ROWS_PER_BATCH", str(cls.max_rows_per_batch))),
            "trigger_seconds": float(_env("TRIGGER_SECONDS", str(cls.trigger_seconds))),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

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
