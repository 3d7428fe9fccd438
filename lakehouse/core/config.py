"""The pipeline's configuration: every setting declared once, here.

Each field of `Settings` carries its environment variable, type, default, range or validator, one
line of help and the section (stage) it belongs to. From that one declaration come the reading of the
environment (pydantic-settings), the one-line errors, the CLI's global options (`cli_options()`), the
README's settings table (`settings_table()`) and `lakehouse config` (`effective()`). A real MongoDB
replica set, Kafka cluster or Spark cluster drop in by changing environment variables, or CLI options,
which override them. Defaults are loopback addresses and folders under the current directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lakehouse.core.collections import DEFAULT_SPEC, CollectionSpec, CollectionsSpec, load_spec
from lakehouse.core.errors import ConfigError, redact

Section = Literal["connections", "producer", "streaming", "warehouse", "monitoring", "servers"]
SECTIONS: tuple[str, ...] = get_args(Section)
KafkaClient = Literal["confluent", "kafka-python"]
KAFKA_CLIENTS: tuple[str, ...] = get_args(KafkaClient)
EventTime = Literal["cluster_time", "order_updated_at"]
WEEK = 7 * 24 * 3600.0  # the longest interval anything takes: longer is a typo (milliseconds as seconds)
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,119}")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_INTERVAL = r"^[1-9][0-9]* (second|minute|hour|day)s?$"
_POSITIVE = "must be a positive number"
_PORT = "is not a TCP port (1-65535, or 0 for none)"
_DURATION = "is not a duration Spark reads; give e.g. '30 minutes' or '45 seconds'"
_SPARK_MASTER = r"^(local(\[([1-9][0-9]*|\*)(,[0-9]+)?\])?|local-cluster\[[0-9]+, *[0-9]+, *[0-9]+\]|spark://\S+|yarn|k8s://\S+)$"
_THRESHOLD = r"\s*[A-Za-z]+\s*:\s*[0-9]+(\.[0-9]+)?\s*"
_THRESHOLDS = rf"^{_THRESHOLD}(,{_THRESHOLD})*$"


def setting(env: str, default: Any, section: Section, help: str, *, flag: str | None = None,
            rule: str | None = None, shown: str | None = None, secret: bool = False, **constraints: Any) -> Any:
    """One setting's whole declaration.

    `default` may be a function (computed per process, e.g. a path under the current folder); `rule` is
    the one-line complaint when a range or pattern refuses a value; `shown` is the default as the README
    prints it; `flag` gives the setting a global CLI option; `secret` masks it wherever it is printed."""
    initial = {"default_factory": default} if callable(default) else {"default": default}
    return Field(**initial, validation_alias=env, description=help, **constraints,
                 json_schema_extra={"env": env, "section": section, "flag": flag, "rule": rule, "shown": shown,
                                    "secret": secret})


def _under_cwd(relative: str) -> Callable[[], Path]:
    return lambda: Path(relative).resolve()


Port = Annotated[int, Field(ge=0, le=65535)]
# Numbers the commands take as options of their own (lakehouse/app/cli.py), checked like the settings.
Seconds = Annotated[float, Field(gt=0, le=WEEK, allow_inf_nan=False)]
Wait = Annotated[float, Field(ge=0, le=WEEK, allow_inf_nan=False)]  # 0: do not wait
Rate = Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


def check_number(kind: Any, text: object) -> float:
    """`text` as a number of `kind` (Seconds, Wait, Rate, Share); ValueError with the one line to print."""
    try:
        return float(TypeAdapter(kind).validate_python(text))
    except ValidationError:
        pass
    try:
        number = float(str(text))
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if number != number:
        raise ValueError(f"{text} is not a number")
    raise ValueError(f"{number} is not in the range {_bounds(kind)}")


def _bounds(kind: Any) -> str:
    """A number type's range as click prints one, e.g. 0<x<=604800."""
    low = high = ""
    for constraint in kind.__metadata__[0].metadata:
        name = type(constraint).__name__
        if name not in ("Gt", "Ge", "Lt", "Le"):
            continue
        shown = f"{getattr(constraint, name.lower()):g}"
        low = {"Gt": f"{shown}<", "Ge": f"{shown}<="}.get(name, low)
        high = {"Lt": f"<{shown}", "Le": f"<={shown}"}.get(name, high)
    return f"{low}x{high}"


class Settings(BaseSettings):
    """Every setting, each declared once. Built by `from_env` (environment, then overrides); built
    directly, it also reads the environment (pydantic-settings), keyword arguments winning."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", case_sensitive=True, env_ignore_empty=True,
                                      validate_by_name=True, validate_by_alias=True, validate_default=False)

    # connections: where the servers and the data are
    mongo_uri: str = setting("MONGO_URI", "mongodb://127.0.0.1:27017/", "connections",
                             "a MongoDB replica set (change streams need one)", flag="--mongo-uri", secret=True)
    mongo_db: str = setting("MONGO_DB", "shop", "connections", "the database to capture", flag="--mongo-db",
                            pattern=r"^[^/\\. \"$*<>:|?]{1,63}$",
                            rule="is not a database name MongoDB accepts (1-63 characters, none of / \\ . \" $ * "
                                 "< > : | ? or spaces)")
    kafka_bootstrap_servers: str = setting("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "connections",
                                           "Kafka bootstrap servers, host:port,...", flag="--kafka")
    spark_master: str = setting("SPARK_MASTER", "local[2]", "connections",
                                "any Spark master URL, e.g. local[2], spark://host:7077", flag="--master",
                                pattern=_SPARK_MASTER,
                                rule="is not a Spark master URL (local, local[2], local[*], local[2,3], "
                                     "spark://host:7077, yarn, k8s://https://host:443)")
    lake_path: Path = setting("LAKE_PATH", _under_cwd("data/lake"), "connections",
                              "root folder of the Delta/Parquet lake", flag="--lake-path", shown="data/lake")
    warehouse_path: Path = setting("WAREHOUSE_PATH", _under_cwd("data/warehouse.duckdb"), "warehouse",
                                   "DuckDB file of the warehouse", flag="--warehouse-path",
                                   shown="data/warehouse.duckdb")
    state_dir: Path = setting("STATE_DIR", _under_cwd("data/state"), "connections",
                              "each stage's checkpoints and state files", flag="--state-dir", shown="data/state")
    stack_dir: Path = setting("STACK_DIR", _under_cwd(".stack"), "servers",
                              "where `make servers` keeps the local servers' data and logs", shown=".stack")
    collections_spec: Path = setting("COLLECTIONS_SPEC", DEFAULT_SPEC, "connections",
                                     "the collections spec: what is captured and what each collection becomes",
                                     flag="--collections-spec", shown="collections.toml (the repository's)")
    collections: Annotated[tuple[str, ...], NoDecode] = setting(
        "COLLECTIONS", (), "connections",
        "a comma-separated subset to capture (one the spec does not describe is keyed by `_id`, with no typed "
        "columns)", shown="every collection the spec describes")
    topic_prefix: str = setting("TOPIC_PREFIX", "cdc", "connections",
                                "topics are `<prefix>.<db>.<collection>`")
    # producer
    kafka_client: KafkaClient = setting(
        "KAFKA_CLIENT", "kafka-python", "producer",
        "the producer's Kafka client: kafka-python (pure Python) or confluent (librdkafka); both are tested, "
        "and capture at the same rate here (bench/producer_bench.py)")
    kafka_partitions: int = setting("KAFKA_PARTITIONS", 3, "producer", "partitions of each topic the pipeline "
                                    "creates", ge=1, le=10_000, rule="must be a whole number from 1 to 10000")
    kafka_replication_factor: int = setting(
        "KAFKA_REPLICATION_FACTOR", 0, "producer",
        "replicas of each topic the pipeline creates; 0 takes the broker's default.replication.factor (1 on the "
        "embedded broker, 3 on `make kafka-cluster`)", ge=0, le=100,
        rule="must be 1 to 100 (at most the brokers there are), or 0 for the broker's default.replication.factor")
    # streaming
    max_rows_per_batch: int = setting("MAX_ROWS_PER_BATCH", 20_000, "streaming",
                                      "the most Kafka records one streaming batch reads", ge=1, le=100_000_000,
                                      rule="must be a whole number from 1 to 100000000")
    trigger_seconds: float = setting("TRIGGER_SECONDS", 2.0, "streaming", "the streaming job's trigger interval",
                                     gt=0, lt=86_400, allow_inf_nan=False, rule=_POSITIVE + " of seconds under a day")
    derived_trigger_seconds: float = setting(
        "DERIVED_TRIGGER_SECONDS", 5.0, "streaming",
        "the trigger interval of the queries over the lake (copies, look-back rules, order lines, aggregates, "
        "sessions, inventory alerts); never shorter than TRIGGER_SECONDS",
        gt=0, lt=86_400, allow_inf_nan=False, rule=_POSITIVE + " of seconds under a day")
    high_value_thresholds: str = setting("HIGH_VALUE_THRESHOLDS", "USD:1000,EUR:900,GBP:800,default:1000",
                                         "streaming", "per-currency amount at or above which an order is high value",
                                         pattern=_THRESHOLDS,
                                         rule="is not CODE:AMOUNT,... (e.g. USD:1000,EUR:900,default:1000)")
    watermark_delay: str = setting("WATERMARK_DELAY", "10 minutes", "streaming",
                                   "how late an event may arrive and still count in the windowed aggregates",
                                   pattern=_INTERVAL, rule=_DURATION)
    event_time_source: EventTime = setting("EVENT_TIME", "cluster_time", "streaming",
                                           "event time: the change's cluster time, or the order's updated_at")
    kafka_fail_on_data_loss: bool = setting(
        "KAFKA_FAIL_ON_DATA_LOSS", False, "streaming",
        "when Kafka lost records the streaming job read or planned: false records the loss and goes on (repair "
        "with `reconcile --repair`), true stops the job (Spark's failOnDataLoss)")
    inventory_low: int = setting("INVENTORY_LOW", 20, "streaming",
                                 "a product's stock at or under this is low (inventory alerts)", ge=0)
    inventory_critical: int = setting("INVENTORY_CRITICAL", 5, "streaming",
                                      "a product's stock at or under this is critical (0 is out of stock)", ge=0)
    session_gap: str = setting("SESSION_GAP", "30 minutes", "streaming",
                               "a customer's order changes further apart than this start a new session",
                               pattern=_INTERVAL, rule=_DURATION)
    # monitoring
    metrics_host: str = setting("METRICS_HOST", "127.0.0.1", "monitoring",
                                "where each service serves /metrics (Compose sets 0.0.0.0)")
    producer_metrics_port: Port = setting("PRODUCER_METRICS_PORT", 9101, "monitoring",
                                          "the producer's metrics port (0: none)", rule=_PORT)
    streaming_metrics_port: Port = setting("STREAMING_METRICS_PORT", 9102, "monitoring",
                                           "the streaming job's metrics port (0: none)", rule=_PORT)
    loader_metrics_port: Port = setting("LOADER_METRICS_PORT", 9103, "monitoring",
                                        "the loader service's metrics port (0: none)", rule=_PORT)
    monitor_metrics_port: Port = setting("MONITOR_METRICS_PORT", 9108, "monitoring",
                                         "the monitor's (`lakehouse metrics --serve`) port (0: none)", rule=_PORT)
    prometheus_port: Port = setting("PROMETHEUS_PORT", 9090, "monitoring",
                                    "the Prometheus `make monitoring` starts", rule=_PORT)
    # servers: the local ones infra/servers.py starts
    mongo_oplog_retention_seconds: int = setting(
        "MONGO_OPLOG_RETENTION_SECONDS", 604_800, "servers",
        "how long the local MongoDB keeps its oplog (a resume token older than this needs a new snapshot)",
        ge=1, rule=_POSITIVE)
    mongo_oplog_max_entries: int = setting(
        "MONGO_OPLOG_MAX_ENTRIES", 500_000, "servers",
        "how many changes the local MongoDB's oplog holds at most, whichever limit comes first (its own "
        "default, 100,000, is 10 minutes at 170 changes/s; opening a stream at a cluster time scans it)",
        ge=1000, le=1_000_000_000, rule="must be a whole number from 1000 to 1000000000")

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from the environment; keyword overrides (CLI options) win. None means not given."""
        given = {name: value for name, value in overrides.items() if value is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise ConfigError(one_line(exc, flags=set(given))) from None

    @field_validator("collections", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        names = tuple(part.strip() for part in value.split(",") if part.strip())
        if not names:
            raise ValueError("COLLECTIONS names no collection; give e.g. COLLECTIONS=orders,customers (or leave it "
                             "unset to capture every collection collections.toml describes)")
        return names

    @field_validator("lake_path", "warehouse_path", "state_dir", "stack_dir", "collections_spec")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Refuse, where they enter, combinations a server or Spark would refuse later with a traceback."""
        if not self.collections:
            object.__setattr__(self, "collections", tuple(self.spec.collections))  # may raise SpecError
        problems = [p for p in (self._address_problem(), *self._name_problems(), self._inventory_problem(),
                                *self._path_problems()) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _address_problem(self) -> str | None:
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

    def _inventory_problem(self) -> str | None:
        if self.inventory_critical < self.inventory_low:
            return None
        return (f"INVENTORY_CRITICAL={self.inventory_critical} and INVENTORY_LOW={self.inventory_low}: "
                "give 0 <= critical < low (e.g. 5 and 20)")

    def _path_problems(self) -> list[str]:
        """A folder setting whose path runs through a regular file can never be created."""
        problems = []
        for name, folder in (("lake_path", self.lake_path), ("warehouse_path", self.warehouse_path.parent),
                             ("state_dir", self.state_dir), ("stack_dir", self.stack_dir)):
            blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
            if blocking is not None:
                problems.append(f"{env_name(name)}={getattr(self, name)} goes through {blocking}, which is a "
                                "file, not a folder; point it somewhere else")
        if self.warehouse_path.is_dir():
            problems.append(f"WAREHOUSE_PATH={self.warehouse_path} is a folder; give the DuckDB file's path")
        return problems

    @property
    def spec(self) -> CollectionsSpec:
        """collections.toml, read once per process, and again when its file changed."""
        return _current_spec(self.collections_spec)

    def collection(self, name: str) -> CollectionSpec:
        return self.spec.get(name)

    def to_env(self) -> dict[str, str]:
        """The same settings as environment variables, for the processes run-all starts."""
        return {env_name(name): _as_text(getattr(self, name)) for name in type(self).model_fields}

    def replace(self, **changes: object) -> Settings:
        """A copy with `changes`, checked again like any other settings."""
        try:
            return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})
        except ValidationError as exc:
            raise ConfigError(one_line(exc, flags=set(changes))) from None

    def section(self, name: Section) -> dict[str, object]:
        """One stage's settings: what `lakehouse config` shows under that heading."""
        return {field: getattr(self, field) for field, info in type(self).model_fields.items()
                if _extra(info)["section"] == name}

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
    def loss_watch_unknown(self) -> Path:
        """Present while the streaming job's Kafka loss watch gets no answer from Kafka (status reads it)."""
        return self.state_dir / "spark" / "loss_watch_unknown.json"

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


# ---- what the declaration gives: errors, CLI options, the README's table, `lakehouse config` ----

def _extra(info: Any) -> dict[str, Any]:
    return info.json_schema_extra  # type: ignore[no-any-return]


def env_name(field: str) -> str:
    return str(_extra(Settings.model_fields[field])["env"])


ENV_NAMES: dict[str, str] = {field: env_name(field) for field in Settings.model_fields}

# What each stage's package reads: the connections (where the servers and the data are, and the names
# derived from them) and its own section, never another stage's, monitoring's or the local servers'
# (tests/unit/test_config.py checks the code keeps to it). The app layer, which runs the stages, reads all.
STAGE_SECTIONS: dict[str, tuple[Section, ...]] = {
    "producer": ("connections", "producer"),
    "streaming": ("connections", "streaming"),
    "warehouse": ("connections", "warehouse"),
}


def section_of(field: str) -> Section | None:
    """The section a setting is declared in; None for a name that is not a setting."""
    info = Settings.model_fields.get(field)
    return None if info is None else _extra(info)["section"]  # type: ignore[no-any-return]


class OtherSection(LookupError):
    """A stage read a setting outside its sections: a bug in that stage, not a bad setting."""


class StageSettings:
    """What a stage is handed: the `connections` section and its own (STAGE_SECTIONS), and the names and
    paths derived from them; every other setting is refused where it is read, naming it. Each stage's
    entry points narrow what they are given with `for_stage`, so a stage cannot come to depend on another
    stage's tuning, on monitoring or on the local servers, whoever calls it. Read-only, picklable (Spark
    ships closures), and `replace` keeps the view."""

    __slots__ = ("_settings", "stage")

    def __init__(self, settings: Settings, stage: str) -> None:
        if stage not in STAGE_SECTIONS:
            raise ValueError(f"no stage {stage!r}; the stages are {', '.join(STAGE_SECTIONS)}")
        object.__setattr__(self, "_settings", settings)
        object.__setattr__(self, "stage", stage)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # private and dunder names are the view's own, never the settings'
            raise AttributeError(name)
        section = section_of(name)
        if section is not None and section not in STAGE_SECTIONS[self.stage]:
            raise OtherSection(f"the {self.stage} stage read {name} ({ENV_NAMES[name]}), a setting of the "
                               f"{section} section; a stage reads only {' and '.join(STAGE_SECTIONS[self.stage])}")
        return getattr(self._settings, name)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"settings are read-only; use replace({name}=...)")

    def __reduce__(self) -> tuple[type[StageSettings], tuple[Settings, str]]:
        return StageSettings, (self._settings, self.stage)

    def __repr__(self) -> str:
        return f"StageSettings({self.stage!r})"

    def replace(self, **changes: object) -> StageSettings:
        for name in changes:
            self.__getattr__(name)  # a stage changes only what it may read
        return StageSettings(self._settings.replace(**changes), self.stage)

    def section(self, name: Section) -> dict[str, object]:
        if name not in STAGE_SECTIONS[self.stage]:
            raise OtherSection(f"the {self.stage} stage read the {name} section")
        return self._settings.section(name)

    def to_env(self) -> dict[str, str]:
        """For a process the stage starts: the stage's sections (the others take their defaults there)."""
        return {name: value for name, value in self._settings.to_env().items()
                if section_of(_FIELD_OF[name]) in STAGE_SECTIONS[self.stage]}


def for_stage(settings: Settings | StageSettings, stage: str) -> Settings:
    """`settings` as `stage` may read them (see StageSettings). Typed as Settings: the view answers the same
    names, and a name outside the stage's sections fails at run time, not in the type checker."""
    if isinstance(settings, StageSettings):
        if settings.stage != stage:
            raise OtherSection(f"the {stage} stage was handed the {settings.stage} stage's settings")
        return settings  # type: ignore[return-value]
    return StageSettings(settings, stage)  # type: ignore[return-value]


_FIELD_OF = {env: field for field, env in ENV_NAMES.items()}
_PARSING = {"int_parsing": "is not a whole number", "int_from_float": "is not a whole number",
            "float_parsing": "is not a number", "bool_parsing": "is not true or false"}


def one_line(exc: ValidationError, flags: Collection[str] = ()) -> str:
    """A ValidationError as the one line the CLI prints: each bad value named by its variable (or by its
    CLI option, when it came from one), with what to give instead."""
    problems = []
    for error in exc.errors():
        where = error["loc"][0] if error["loc"] else None
        field = _FIELD_OF.get(str(where), str(where)) if where is not None else None
        if field not in Settings.model_fields or error["type"] == "value_error":
            problems.append(str(error.get("ctx", {}).get("error", error["msg"])))
            continue
        extra = _extra(Settings.model_fields[field])
        name = extra["flag"] if field in flags and extra["flag"] else extra["env"]
        value = error["input"]
        if error["type"] in _PARSING:
            problems.append(f"{name}={value!r} {_PARSING[error['type']]}")
        elif error["type"] == "literal_error":
            choices = ", ".join(get_args(Settings.model_fields[field].annotation))
            problems.append(f"{name}={value!r} is not one of: {choices}")
        else:  # a range or pattern: numbers as typed, text quoted
            shown = value if isinstance(value, int | float) or _is_number(value) else repr(value)
            problems.append(f"{name}={shown} {extra['rule'] or error['msg']}")
    return redact("; ".join(problems))


def _is_number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _as_text(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def cli_options() -> Iterator[tuple[str, str, str]]:
    """(option, field, help) for each setting that has a global CLI option."""
    for field, info in Settings.model_fields.items():
        extra = _extra(info)
        if extra["flag"]:
            yield extra["flag"], field, f"{info.description} [env: {extra['env']}]"


def _default_text(field: str) -> str:
    info = Settings.model_fields[field]
    extra = _extra(info)
    if extra["shown"]:
        return str(extra["shown"])
    return _as_text(info.default)


def settings_table() -> str:
    """The README's settings table, one row per setting, grouped by section."""
    rows = ["| section | variable | default | meaning |", "|---|---|---|---|"]
    for section in SECTIONS:
        for field, info in Settings.model_fields.items():
            extra = _extra(info)
            if extra["section"] == section:
                flag = f" (`{extra['flag']}`)" if extra["flag"] else ""
                rows.append(f"| {section} | `{extra['env']}`{flag} | `{_default_text(field)}` | {info.description} |")
    return "\n".join(rows)


def effective(settings: Settings, flags: Mapping[str, object]) -> Iterator[tuple[str, str, str, str]]:
    """(section, variable, value, source) of every setting: where each value came from (flag, env or
    default), secrets masked."""
    for section in SECTIONS:
        for field, value in settings.section(section).items():  # type: ignore[arg-type]
            extra = _extra(Settings.model_fields[field])
            if flags.get(field) is not None:
                source = f"flag {extra['flag']}"
            elif os.environ.get(extra["env"], "") != "":
                source = "env"
            elif field == "collections":
                source = f"default: all of {settings.collections_spec.name}"
            else:
                source = "default"
            text = _as_text(value)
            yield section, extra["env"], redact(text) if extra["secret"] else text, source


def _current_spec(path: Path) -> CollectionsSpec:
    """The spec file is read once per process and again only when it changed: a stat() per call (about a
    microsecond) is the whole check, and load_spec caches by modification time."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return load_spec(path, mtime)
