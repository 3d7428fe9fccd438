"""The loader service keeps loading while a reconcile round reads MongoDB (a round of a big collection
takes minutes), never while the round holds the warehouse open for reading, and a stop still ends it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lakehouse.app import service as service_module
from lakehouse.app.service import LoaderService
from lakehouse.core.config import Settings
from lakehouse.core.stopping import Interrupted
from warehouse.connection import same_process_turn


class Lake:
    """Silver moving on by one version each time it is looked at; the loads made of it."""

    def __init__(self) -> None:
        self.version = 0
        self.loads: list[int] = []

    def silver_version(self, _settings: Settings) -> int:
        self.version += 1
        return self.version

    def load(self, _settings: Settings) -> Any:
        self.loads.append(self.version)
        return type("Result", (), {"delta_version": self.version, "rows_read": 1})()


@pytest.fixture
def lake(monkeypatch: pytest.MonkeyPatch) -> Lake:
    lake = Lake()
    monkeypatch.setattr(service_module, "silver_version", lake.silver_version)
    monkeypatch.setattr(service_module, "load", lake.load)
    return lake


def a_round(between: Callable[[], None] | None = None, steps: int = 3) -> Callable[..., list[Any]]:
    """A reconcile round that pauses `steps` times between its reads, as round_of does (wait(0))."""
    def round_of(_settings: Settings, _repair: bool, _settle: float, meanwhile: Callable[[], object],
                 wait: Callable[[float], object], say: Callable[[str], None]) -> list[Any]:
        for _ in range(steps):
            if between:
                between()
            wait(0)
        meanwhile()
        return []
    return round_of


def test_a_round_loads_what_silver_has_new_between_its_reads(lake: Lake, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setattr(service_module, "round_of", a_round())
    service = LoaderService(Settings.from_env(state_dir=tmp_path), every=0.0, reconcile_every=0.0,
                            wait=lambda _: None)
    service.round()
    assert len(lake.loads) >= 4  # the round's own load, one per pause, and the load after it
    assert service.loaded_version == lake.loads[-1]


def test_no_load_while_the_round_holds_the_warehouse_open_for_reading(lake: Lake, monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    monkeypatch.setattr(service_module, "round_of", a_round(steps=3))
    service = LoaderService(Settings.from_env(state_dir=tmp_path), every=0.0, reconcile_every=0.0,
                            wait=lambda _: None)
    service.ready, service.loaded_version = True, None
    with same_process_turn:  # the round's copy of the warehouse's side, in its thread
        holder = threading.Thread(target=service.round)
        holder.start()
        holder.join(10)
    assert not holder.is_alive()
    assert lake.loads == [lake.loads[0]]  # the load before the round only


def test_a_stop_during_the_round_still_ends_it(lake: Lake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(service_module, "round_of", a_round())

    def stopped(_: float) -> None:
        raise Interrupted

    service = LoaderService(Settings.from_env(state_dir=tmp_path), every=0.0, reconcile_every=0.0, wait=stopped)
    with pytest.raises(Interrupted):
        service.round()
