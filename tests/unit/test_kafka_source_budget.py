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
