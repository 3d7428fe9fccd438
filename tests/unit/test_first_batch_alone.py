"""The streaming service starts the queries over the lake once the lake query has run its first trigger
(its cold batch runs alone), and a stop or a failure meanwhile is not waited out."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from lakehouse.core.stopping import StopSignals
from streaming.job import QueryFailed, _first_batch_alone


class Query:
    """A streaming query as the job sees it: progress after `ready_after` looks, or a failure."""

    name = "lake"

    def __init__(self, ready_after: int | None = None, failure: str | None = None) -> None:
        self.looks, self.ready_after, self.failure = 0, ready_after, failure

    @property
    def isActive(self) -> bool:  # noqa: N802 - Spark's name
        return self.failure is None

    @property
    def lastProgress(self) -> Any:  # noqa: N802 - Spark's name
        self.looks += 1
        return {"batchId": 0} if self.ready_after is not None and self.looks > self.ready_after else None

    def exception(self) -> str | None:
        return self.failure


def test_returns_once_the_lake_query_has_run_a_trigger() -> None:
    query = Query(ready_after=2)
    _first_batch_alone(query, StopSignals(), longest=30)
    assert query.looks == 3


def test_a_stop_ends_the_wait_at_once() -> None:
    signals = StopSignals()
    threading.Timer(0.3, signals.requested.set).start()
    started = time.monotonic()
    _first_batch_alone(Query(), signals, longest=30)
    assert time.monotonic() - started < 5


def test_a_failed_lake_query_is_raised_not_waited_for() -> None:
    with pytest.raises(QueryFailed, match="lake failed: boom"):
        _first_batch_alone(Query(failure="boom"), StopSignals(), longest=30)


def test_the_others_start_anyway_after_the_longest_wait() -> None:
    started = time.monotonic()
    _first_batch_alone(Query(), StopSignals(), longest=0.5)
    assert time.monotonic() - started < 5
