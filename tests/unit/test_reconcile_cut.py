"""A periodic reconcile counts a difference only where the warehouse is really wrong (lakehouse/app/reconcile.py):
once the chain has passed the round's cut, on a document MongoDB did not change between the two looks.
MongoDB and the warehouse are stood in for by the two looks' results; the producer's checkpoint and the
streaming job's offsets log are real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lakehouse.app import reconcile as rc
from lakehouse.app.reconcile import Reconciliation, confirmed, lines
from lakehouse.core.config import Settings
from producer.checkpoint import Checkpoint, FileCheckpointStore

pytestmark = pytest.mark.unit

CUT = (1_000, 5)
TOPIC = "cdc.shop.orders"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(state_dir=tmp_path / "state", lake_path=tmp_path / "lake", mongo_db="shop",
                             topic_prefix="cdc")


def _producer_read(settings: Settings, read_until: tuple[int, int] | None, acked: int = 10) -> None:
    FileCheckpointStore(settings.producer_checkpoint).save(Checkpoint(
        {"_data": "x"}, None, 1, {f"{TOPIC}:0": acked}, ("orders",), read_until))


def _stream_committed(settings: Settings, offset: int) -> None:
    checkpoint = settings.spark_checkpoint
    (checkpoint / "offsets").mkdir(parents=True, exist_ok=True)
    (checkpoint / "commits").mkdir(parents=True, exist_ok=True)
    (checkpoint / "offsets" / "0").write_text("v1\n{}\n" + json.dumps({TOPIC: {"0": offset}}) + "\n")
    (checkpoint / "commits" / "0").write_text("v1\n{}\n")


def _first() -> Reconciliation:
    return Reconciliation(3, 3, missing=["m"], mismatched=["stable", "moving"], extra=["x"], collection="orders",
                          digests={"m": "dm", "stable": "ds", "moving": "d1", "x": None})


@pytest.fixture
def second_look(monkeypatch: pytest.MonkeyPatch) -> list[Reconciliation]:
    """The second look finds every difference again; `moving` changed in MongoDB in between."""
    looked: list[Reconciliation] = []

    def again(settings: Settings, collection: str, keys: Reconciliation | None = None,
              check: object = None) -> Reconciliation:
        assert keys is not None and callable(check)  # the second look can be stopped between its pieces
        second = Reconciliation(0, 0, missing=list(keys.missing), extra=list(keys.extra),
                                mismatched=list(keys.mismatched), collection=collection,
                                digests={**keys.digests, "moving": "d2"})
        looked.append(second)
        return second

    monkeypatch.setattr(rc, "reconcile", again)
    monkeypatch.setattr(rc, "_now", lambda settings: CUT)
    return looked


def test_after_the_chain_passed_the_cut_only_documents_unchanged_between_the_looks_count(
        settings: Settings, second_look: list[Reconciliation]) -> None:
    _producer_read(settings, (CUT[0], CUT[1] + 1), acked=10)
    _stream_committed(settings, 10)
    loads: list[int] = []
    [result] = confirmed(settings, [_first()], 0, lambda: loads.append(1), lambda _: None, catch_up_limit=5)
    assert (result.missing, result.extra, result.mismatched) == (["m"], ["x"], ["stable"])
    assert result.in_flight == ["moving"] and not result.deferred
    assert loads, "a load runs once the chain has passed the cut, before the second look"
    assert "in flight: 1" in lines([result])[0]


def test_a_producer_that_has_not_read_past_the_cut_defers_the_round(
        settings: Settings, second_look: list[Reconciliation]) -> None:
    _producer_read(settings, CUT, acked=10)  # read up to the cut itself, not past it
    _stream_committed(settings, 10)
    [result] = confirmed(settings, [_first()], 0, lambda: None, lambda _: None, catch_up_limit=0.2)
    assert result.ok and result.deferred and not second_look
    assert result.in_flight == ["m", "moving", "stable", "x"]
    assert "deferred: 4 documents in flight" in lines([result])[0]


def test_a_producer_never_started_defers_the_round_and_says_so(
        settings: Settings, second_look: list[Reconciliation], caplog: pytest.LogCaptureFixture) -> None:
    [result] = confirmed(settings, [_first()], 0, lambda: None, lambda _: None, catch_up_limit=0.2)
    assert result.deferred and result.ok
    assert "is `lakehouse produce` running?" in caplog.text


def test_a_streaming_job_behind_what_kafka_acknowledged_defers_the_round(
        settings: Settings, second_look: list[Reconciliation], caplog: pytest.LogCaptureFixture) -> None:
    _producer_read(settings, (CUT[0] + 1, 0), acked=10)
    _stream_committed(settings, 9)
    [result] = confirmed(settings, [_first()], 0, lambda: None, lambda _: None, catch_up_limit=0.2)
    assert result.deferred and not second_look
    assert f"{TOPIC}:0 at 9 of 10" in caplog.text


def test_a_round_with_no_difference_waits_for_nothing(settings: Settings, second_look: list[Reconciliation]) -> None:
    clean = Reconciliation(3, 3, collection="orders")
    assert confirmed(settings, [clean], 0, lambda: None, lambda _: None, catch_up_limit=0) == [clean]
    assert not second_look


def test_the_checkpoint_keeps_the_cut_it_was_saved_with(settings: Settings) -> None:
    _producer_read(settings, (7, 3))
    loaded = FileCheckpointStore(settings.producer_checkpoint).load()
    assert loaded is not None and loaded.read_until == (7, 3)


def test_a_repair_kafka_refuses_is_counted_dead_lettered_and_not_retried(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A document too large for Kafka: its repair is refused for good, so the round reports it as
    dead-lettered and succeeds (a loader service would otherwise fail on it every round)."""
    import mongomock

    from lakehouse.adapters.kafka import Sent
    from lakehouse.contracts import events

    client = mongomock.MongoClient()
    client[settings.mongo_db]["orders"].insert_many([{"_id": "big", "pad": "x" * 10}, {"_id": "small"}])
    client.close = lambda: None  # type: ignore[method-assign]
    big, small = events.doc_id_text({"_id": "big"}), events.doc_id_text({"_id": "small"})

    class Refusing:
        sent: list[str] = []

        def send_all(self, items, route, flush_timeout=None):  # noqa: ANN001, ANN201 - the adapter's shape
            outcome = Sent()
            for item in items:
                route(item)
                if item["doc_id"] == big:
                    outcome.refused.append((item, "MessageSizeTooLargeError: the message is too large"))
                else:
                    outcome.acked.append((item, None))
                    self.sent.append(item["doc_id"])
            return outcome

        def close(self) -> None:
            pass

    monkeypatch.setattr(rc, "connect_mongo", lambda *a, **k: client)
    monkeypatch.setattr(rc, "publisher", lambda *a, **k: Refusing())
    result = Reconciliation(2, 0, missing=[big, small], collection="orders",
                            ids={big: events.key_json({"_id": "big"}), small: events.key_json({"_id": "small"})})
    said: list[str] = []
    assert rc.repair(settings, result, said.append) == 1
    assert result.dead_lettered == [big] and result.missing == [small] and Refusing.sent == [small]
    assert any("counted as dead-lettered" in line for line in said), said

