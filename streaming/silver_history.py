"""What the quality rules and the enrichment look back on: silver's earlier versions of the documents of the
collections they read, held by the streaming job between its batches.

Reading silver from Delta for every batch cost seconds a batch and grew with the lake. Instead silver is
read once when the query starts (and again every REFRESH_BATCHES batches, which also bounds the plan),
and each batch's silver rows are added as a chunk of their own. A chunk is locally checkpointed: small,
and cut from the batch's lineage, so no later batch recomputes an earlier one. If an executor holding a
chunk is lost, the next batch fails, the query restarts and silver is read afresh.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

REFRESH_BATCHES = 25  # batches after which silver is read again from the lake instead of the chunks


class SilverHistory:
    def __init__(self, spark: SparkSession, silver: Path, collections: list[str], columns: list[str]) -> None:
        self.spark = spark
        self.silver = silver
        self.collections = collections
        self.columns = columns
        self._base: DataFrame | None = None
        self._chunks: list[DataFrame] = []
        self._loaded = False

    def frame(self) -> DataFrame | None:
        """Silver's rows of the watched collections as the lake holds them now (None while there are none)."""
        if not self.collections:
            return None
        if not self._loaded or len(self._chunks) >= REFRESH_BATCHES:
            self._load()
        parts = ([self._base] if self._base is not None else []) + self._chunks
        if not parts:
            return None
        out = parts[0]
        for part in parts[1:]:
            out = out.unionByName(part)
        return out

    def add(self, silver_rows: DataFrame) -> None:
        """A committed batch's silver rows become part of the history."""
        if not self.collections or not self._loaded:
            return
        chunk = self._watched(silver_rows).localCheckpoint(eager=True)
        self._chunks.append(chunk)

    def close(self) -> None:
        self._base, self._chunks, self._loaded = None, [], False

    def _watched(self, rows: DataFrame) -> DataFrame:
        return rows.where(F.col("collection").isin(*self.collections)).select(*self.columns)

    def _load(self) -> None:
        self.close()
        if (self.silver / "_delta_log").exists():
            # Checkpointed, not persisted: a plan holding a Delta scan is resolved again against the table's
            # newest version each time it runs, so a batch's cached frames would miss their cache once the
            # batch had committed to silver, and be computed again from Kafka.
            self._base = self._watched(self.spark.read.format("delta").load(str(self.silver))).localCheckpoint(
                eager=True)
        self._loaded = True
