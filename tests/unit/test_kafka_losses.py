"""The streaming job's data-loss watch (streaming/kafka_losses.py) and the checkpoint positions both Kafka
sources wrote, without servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lakehouse.adapters.kafka import KafkaTransient
from lakehouse.contracts.positions import batch_offsets, committed_offsets, read_offsets, spark_form
from streaming.kafka_losses import LossWatch, find_losses, migrate_checkpoint

pytestmark = pytest.mark.unit


def test_losses_found_when_the_end_goes_back_records_are_deleted_or_offsets_are_reused() -> None:
    positions = {"t:0": 100, "t:1": 50, "t:2": 70, "t:3": 10}
    seen = {"t:0": "99:5:1", "t:1": "49:5:2", "t:2": "69:5:3", "t:3": None}
    begins = {"t:0": 0, "t:1": 60, "t:2": 0, "t:3": 0}
    ends = {"t:0": 80, "t:1": 90, "t:2": 120, "t:3": 40}
    now_at = {"t:2": "69:9:7"}  # another record sits where the query read offset 69
    by = {loss["partition"]: loss for loss in find_losses(positions, seen, begins, ends, now_at)}
    assert set(by) == {"t:0", "t:1", "t:2"}  # t:3 has no fingerprint and its records are all there
    # The stream goes on from the new end, skipping the new records below it: where they begin is looked up
    # by the time of the last record read (from None).
    assert (by["t:0"]["from"], by["t:0"]["to"]) == (None, 80) and "went back" in by["t:0"]["reason"]
    assert (by["t:1"]["from"], by["t:1"]["to"]) == (50, 60) and "deleted" in by["t:1"]["reason"]
    assert by["t:2"]["from"] is None and "re-used" in by["t:2"]["reason"]
    # Without a fingerprint the whole range from the beginning counts.
    assert find_losses({"t:3": 10}, {"t:3": None}, {"t:3": 0}, {"t:3": 4}, {})[0]["from"] == 0
    # Nothing lost: the same record is still there, and partitions the query has not read are not judged.
    assert find_losses({"t:0": 100}, {"t:0": "99:5:1"}, {"t:0": 0}, {"t:0": 150}, {"t:0": "99:5:1"}) == []
    assert find_losses({}, {}, {"t:9": 5}, {"t:9": 9}, {}) == []


def test_positions_read_both_sources_forms() -> None:
    assert read_offsets('{"cdc.db.orders":{"0":12,"1":7}}') == {"cdc.db.orders:0": 12, "cdc.db.orders:1": 7}
    assert read_offsets('{"cdc.db.orders:0":[30,"29:1:2",7],"cdc.db.orders:1":5}') == {
        "cdc.db.orders:0": 30, "cdc.db.orders:1": 5}
    assert json.loads(spark_form({"a.b:0": 3, "a.b:1": 4, "c:0": 1})) == {"a.b": {"0": 3, "1": 4}, "c": {"0": 1}}


def _checkpoint(root: Path, batches: list[str]) -> Path:
    (root / "offsets").mkdir(parents=True)
    (root / "commits").mkdir()
    (root / "sources" / "0").mkdir(parents=True)
    (root / "sources" / "0" / "0").write_text("v1\n{}")
    for n, line in enumerate(batches):
        (root / "offsets" / str(n)).write_text(f'v1\n{{"batchWatermarkMs":0,"batchTimestampMs":0}}\n{line}')
        (root / "commits" / str(n)).write_text('v1\n{"nextBatchWatermarkMs":0}')
    return root


def test_a_checkpoint_of_the_earlier_python_source_is_rewritten_for_sparks_source(tmp_path: Path) -> None:
    old = _checkpoint(tmp_path / "lake", ['{"t:0":[10,"9:1:1"],"t:1":4}', '{"t:0":[25,"24:1:1"],"t:1":[9,"8:1:1",6]}'])
    assert migrate_checkpoint(old)
    assert committed_offsets(old) == {"t:0": 25, "t:1": 9} and batch_offsets(old, 0) == {"t:0": 10, "t:1": 4}
    assert (old / "offsets" / "1").read_text().splitlines()[2] == '{"t":{"0":25,"1":9}}'
    assert not (old / "sources").exists()  # Spark's source writes its own metadata at its next start
    assert not migrate_checkpoint(old)  # already in Spark's form: left alone
    assert not migrate_checkpoint(tmp_path / "none")


class _Kafka:
    """OffsetReader's answers, or its timeout while `down`."""

    def __init__(self) -> None:
        self.down = True
        self.closed = 0

    def _answer(self, value: dict) -> dict:
        if self.down:
            raise KafkaTransient("Kafka did not answer (KafkaTimeoutError: Failed to get offsets in 30000 ms)")
        return value

    def begin_offsets(self, keys: list[str]) -> dict[str, int]:
        return self._answer({k: 0 for k in keys})

    def end_offsets(self, keys: list[str]) -> dict[str, int]:
        return self._answer({k: 5 for k in keys})

    def records_at(self, wanted: dict[str, int]) -> dict:
        return self._answer({})

    def close(self) -> None:
        self.closed += 1


def test_a_kafka_that_does_not_answer_the_loss_watch_leaves_the_question_open(tmp_path: Path) -> None:
    """A timeout in the loss watch is "unknown this time": no exception reaches the stream, it is counted,
    status names it while it lasts, and the next look that gets an answer clears it."""
    from lakehouse.app.status import render
    from streaming import metrics

    state, unknown = tmp_path / "positions.json", tmp_path / "unknown.json"
    state.write_text(json.dumps({"0": {"positions": {"t:0": 5}, "seen": {"t:0": None}}}))
    watch = LossWatch("127.0.0.1:1", tmp_path / "checkpoint", state, None, True, unknown)
    kafka = watch.reader = _Kafka()  # type: ignore[assignment]
    errors = metrics.STREAM_LOSS_WATCH_ERRORS._value.get()  # noqa: SLF001
    watch.check(before_batch=1)
    watch.check()
    assert metrics.STREAM_LOSS_WATCH_ERRORS._value.get() == errors + 2  # noqa: SLF001
    held = json.loads(unknown.read_text())
    assert held["failures"] == 2 and "KafkaTimeoutError" in held["error"] and kafka.closed == 2
    report = {"at": "now", "mongodb": {"state": "down"}, "producer": {"state": "down"},
              "kafka": {"state": "ok", "partitions": [], "total_lag": 0, "loss_watch_unknown": held},
              "spark": {"state": "none"}, "warehouse": {"state": "none"}, "freshness_seconds": None}
    assert any("loss watch: Kafka has not answered it since" in line for line in render(report))
    kafka.down = False
    watch.check(before_batch=1)
    assert not unknown.exists()
