"""Each micro-batch is appended once per table (streaming/lake_writer.OnceAppender), across a restart that
replays the batch in hand, with no Delta state rebuilt per append."""

from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable

from streaming.lake_writer import OnceAppender, committed

pytestmark = pytest.mark.spark


def rows_in(table: Path) -> list[int]:
    return sorted(DeltaTable(str(table)).to_pyarrow_table(columns=["n"]).column("n").to_pylist())


def frame(spark: object, *numbers: int) -> object:
    return spark.createDataFrame([(n,) for n in numbers], "n long")  # type: ignore[attr-defined]


def test_a_replayed_batch_is_not_appended_twice(spark_local: object, tmp_path: Path) -> None:
    table = tmp_path / "t"
    first_run = OnceAppender("writer-a")
    assert first_run.append(frame(spark_local, 1, 2), table, 0)
    assert first_run.append(frame(spark_local, 3), table, 1)
    assert committed(table, "writer-a", 1) and not committed(table, "writer-a", 2)
    assert not committed(table, "writer-b", 1)  # another checkpoint's batch 1 is another batch

    # A restart: Spark calls the batch in hand again (1), then goes on (2).
    second_run = OnceAppender("writer-a")
    assert not second_run.append(frame(spark_local, 3), table, 1)
    assert second_run.append(frame(spark_local, 4), table, 2)
    # Another writer (a replay into a new checkpoint) starts its batches at 0 again.
    assert OnceAppender("writer-b").append(frame(spark_local, 5), table, 0)
    assert rows_in(table) == [1, 2, 3, 4, 5]


def test_a_lake_written_with_delta_txn_options_is_not_appended_again(spark_local: object, tmp_path: Path) -> None:
    table = tmp_path / "t"
    for batch in (0, 1):
        (frame(spark_local, batch).write.format("delta").mode("append")  # type: ignore[attr-defined]
         .option("txnAppId", "writer-a").option("txnVersion", batch).save(str(table)))
    appender = OnceAppender("writer-a")
    assert not appender.append(frame(spark_local, 1), table, 1)
    assert appender.append(frame(spark_local, 2), table, 2)
    assert rows_in(table) == [0, 1, 2]


def test_what_a_querys_batches_hold_open_is_closed_when_it_ends(spark_local: object, tmp_path: Path) -> None:
    """The lake query's foreachBatch holds Kafka consumers (the loss watch's) on the driver: they are closed
    when the query ends, however it ends, so a restarted or repeated query leaves no clients behind; and
    the end of a run never closes what the next run of the same query (same checkpoint, same id) holds,
    however late that end is announced."""
    from streaming.job import _Closer
    from tests.conftest import wait_for

    closer = _Closer.of(spark_local)  # type: ignore[arg-type]
    assert _Closer.of(spark_local) is closer  # type: ignore[arg-type]
    closed: list[str] = []
    runs = []
    for run in ("first", "second"):
        query = (spark_local.readStream.format("rate").load()  # type: ignore[attr-defined]
                 .writeStream.foreachBatch(lambda df, batch_id: None)
                 .option("checkpointLocation", str(tmp_path / "checkpoint")).start())
        closer.when_ended(query, lambda run=run: closed.append(run))
        runs.append(query)
        if run == "second":
            closer.onQueryTerminated(type("Late", (), {"runId": runs[0].runId})())  # the first run's end, again
            assert closed == ["first"] and query.isActive
        query.stop()
        wait_for(lambda run=run: run in closed, 60, f"the {run} run's resources closed")
    assert runs[0].id == runs[1].id and runs[0].runId != runs[1].runId
    assert closed == ["first", "second"]
