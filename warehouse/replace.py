"""Replacing a range of the warehouse's changes with what the lake holds for it (replays): the range is
a value (`Changes`), turned into SQL and a Parquet filter here, never by the caller."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.compute as pc
import pyarrow.dataset as pads

from lakehouse.contracts import tables
from lakehouse.contracts.types import ident
from lakehouse.core.config import Settings, for_stage
from lakehouse.core.errors import ConfigError
from warehouse.apply import apply_collection, in_transaction
from warehouse.connection import connect
from warehouse.errors import WarehouseError
from warehouse.lake import check_lake, read_silver, silver_table
from warehouse.loader import current_counts, refresh_lake_views
from warehouse.schema import WarehouseSchema


@dataclass(frozen=True)
class Changes:
    """Changes at or after a cluster time, or at or after an offset of each named Kafka partition (or none)."""

    since_cluster_time: tuple[int, int] | None = None
    since_offsets: tuple[tuple[str, int, int], ...] = ()

    def sql(self) -> str:
        """The range over a table of changes (numbers formatted as numbers, topic names escaped)."""
        if self.since_cluster_time is not None:
            second, increment = (int(v) for v in self.since_cluster_time)
            return f"(cluster_time_s, cluster_time_inc) >= ({second}, {increment})"
        if not self.since_offsets:
            return "false"
        return " OR ".join(f"(kafka_topic = '{topic.replace(chr(39), chr(39) * 2)}' AND kafka_partition = "
                           f"{int(partition)} AND kafka_offset >= {int(offset)})"
                           for topic, partition, offset in self.since_offsets)

    def arrow(self) -> pads.Expression:
        """The same range as a filter over silver (pushed down to the Parquet scan)."""
        s, inc = pads.field("cluster_time_s"), pads.field("cluster_time_inc")
        if self.since_cluster_time is not None:
            second, increment = self.since_cluster_time
            return (s > second) | ((s == second) & (inc >= increment))
        if not self.since_offsets:
            return s < 0
        expression = None
        for topic, partition, offset in self.since_offsets:
            part = ((pads.field("kafka_topic") == topic) & (pads.field("kafka_partition") == partition)
                    & (pads.field("kafka_offset") >= offset))
            expression = part if expression is None else expression | part
        assert expression is not None
        return expression


@dataclass(frozen=True)
class Replaced:
    replaced: int  # changes of the range the warehouse held
    inserted: int  # changes of the range the lake holds, now in the warehouse (0 for a dry run)
    matching: int  # silver rows in the range
    current: dict[str, int]  # per collection, documents in its current state afterwards


class UnknownPartitions(ConfigError):
    """The range names Kafka partitions neither the warehouse nor the lake has changes from."""


def replace_changes(settings: Settings, changes: Changes, dry_run: bool = False) -> Replaced:
    """Delete the warehouse's changes in `changes` and insert the lake's, re-deriving the documents they
    touch, for every captured collection, in one transaction (a dry run only counts)."""
    settings = for_stage(settings, "warehouse")
    silver = silver_table(settings)
    if silver is None:
        raise WarehouseError(f"no silver table at {settings.table_path(tables.SILVER)} to replay from")
    schema = WarehouseSchema.of(settings)
    incoming = read_silver(silver, schema.collections, where=changes.arrow(), what="replay: read silver")
    con = connect(settings.warehouse_path, schema=schema)
    try:
        check_lake(con, settings, silver)
        where = changes.sql()
        if changes.since_offsets:
            known = {(t, p) for spec in schema.collections for t, p in con.execute(
                f"SELECT DISTINCT kafka_topic, kafka_partition FROM {ident(spec.changes)}").fetchall()}
            known |= {(r["kafka_topic"], r["kafka_partition"]) for r in incoming.select(
                ["kafka_topic", "kafka_partition"]).to_pylist()}
            unknown = sorted(f"{t}[{p}]" for t, p, _ in changes.since_offsets if (t, p) not in known)
            if unknown:
                have = ", ".join(sorted(f"{t}[{p}]" for t, p in known)) or "nothing"
                raise UnknownPartitions(f"--from-offsets names {', '.join(unknown)}, which neither the warehouse nor "
                                        f"the lake has changes from (they have {have})")
        replaced = sum(int(con.execute(f"SELECT count(*) FROM {ident(spec.changes)} WHERE {where}").fetchall()[0][0])
                       for spec in schema.collections)
        inserted = 0

        def apply_all() -> None:
            nonlocal inserted
            for spec in schema.collections:
                mine = incoming.filter(pc.equal(incoming["collection"], spec.name))
                inserted += apply_collection(con, spec, mine, replace=where)
            refresh_lake_views(con, settings)

        if not dry_run:
            in_transaction(con, apply_all, "replacing changes")
        return Replaced(replaced, inserted, incoming.num_rows, current_counts(con, schema))
    finally:
        con.close()
