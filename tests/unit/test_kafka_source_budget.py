from hypothesis import given
from hypothesis import strategies as st

from streaming.kafka_source import share_budget


def test_budget_is_shared_so_no_partition_starves() -> None:
    current = {"t:0": 0, "t:1": 0, "t:2": 0}
    ends = {"t:0": 1000, "t:1": 5, "t:2": 1000}
    assert share_budget(current, ends, 99) == {"t:0": 47, "t:1": 5, "t:2": 47}


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=6), st.integers(1, 200))
def test_budget_never_exceeded_nor_past_the_end(pairs: list[tuple[int, int]], budget: int) -> None:
    current = {f"t:{i}": a for i, (a, _) in enumerate(pairs)}
    ends = {f"t:{i}": a + b for i, (a, b) in enumerate(pairs)}
    result = share_budget(current, ends, budget)
    taken = sum(result[k] - current[k] for k in current)
    assert taken == min(budget, sum(ends[k] - current[k] for k in current))
    assert all(current[k] <= result[k] <= ends[k] for k in current)


def test_options_are_read_whatever_their_case_and_checked() -> None:
    import pytest
    from pyspark.sql.streaming.datasource import ReadMaxRows

    from streaming.kafka_source import KafkaStreamReader

    reader = KafkaStreamReader({"kafka.bootstrap.servers": "h:1", "subscribe": "a, b",
                                "maxoffsetspertrigger": "150", "startingoffsets": "latest"})
    assert reader.getDefaultReadLimit() == ReadMaxRows(150)
    assert reader.topics == ["a", "b"] and reader.starting == "latest"
    with pytest.raises(ValueError, match="subscribe"):
        KafkaStreamReader({"kafka.bootstrap.servers": "h:1"})


def test_losses_found_when_the_end_goes_back_records_are_deleted_or_offsets_are_reused() -> None:
    from streaming.kafka_source import find_losses

    start = {"t:0": [100, "99:5:1"], "t:1": [50, "49:5:2"], "t:2": [70, "69:5:3"], "t:3": 10}
    begins = {"t:0": 0, "t:1": 60, "t:2": 0, "t:3": 0, "t:4": 3}
    ends = {"t:0": 80, "t:1": 90, "t:2": 120, "t:3": 40, "t:4": 9}
    records = {"t:2": "69:9:7"}  # another record sits where the query read offset 69
    current, losses = find_losses(start, begins, ends, records)
    assert current == {"t:0": 80, "t:1": 60, "t:2": 70, "t:3": 10, "t:4": 3}
    by = {loss["partition"]: loss for loss in losses}
    assert set(by) == {"t:0", "t:1", "t:2"}  # t:3 (a checkpoint without fingerprints) cannot be checked
    # Below the new end there may be new records too: where they begin is looked up by time (from None).
    assert (by["t:0"]["from"], by["t:0"]["to"]) == (None, 100) and "went back" in by["t:0"]["reason"]
    assert (by["t:1"]["from"], by["t:1"]["to"]) == (50, 60) and "deleted" in by["t:1"]["reason"]
    assert by["t:2"]["from"] is None and "re-used" in by["t:2"]["reason"]
    assert find_losses({"t:3": 10}, {"t:3": 0}, {"t:3": 4}, {})[1][0]["from"] == 4  # no fingerprint: the end
    # Nothing lost: the same record is still there.
    assert find_losses({"t:0": [100, "99:5:1"]}, {"t:0": 0}, {"t:0": 150}, {"t:0": "99:5:1"})[1] == []


def test_positions_read_old_and_new_checkpoints() -> None:
    from lakehouse.contracts.positions import next_offset, position

    assert position(12) == (12, None, None) and next_offset([30, "29:1:2"]) == 30
    assert position([30, "29:1:2", 7]) == (30, "29:1:2", 7)

