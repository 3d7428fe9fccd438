from pathlib import Path

import pytest

from lakehouse.core.config import Settings


def test_env_overrides_defaults_and_cli_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGO_URI", "mongodb://db.example:27018/?replicaSet=rs0")
    monkeypatch.setenv("COLLECTIONS", "orders, customers")
    monkeypatch.setenv("KAFKA_PARTITIONS", "6")
    settings = Settings.from_env(kafka_bootstrap_servers="k1:9093,k2:9093")
    assert settings.mongo_address == ("db.example", 27018)
    assert settings.collections == ("orders", "customers")
    assert settings.kafka_partitions == 6
    assert settings.kafka_address == ("k1", 9093)
    assert settings.topics == ("cdc.shop.orders", "cdc.shop.customers")


def test_round_trips_through_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings.from_env(lake_path=tmp_path / "lake", collections=("a", "b"), trigger_seconds=0.5)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == settings


def test_bad_number_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PARTITIONS", "three")
    with pytest.raises(ValueError, match="KAFKA_PARTITIONS='three'"):
        Settings.from_env()
