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


def test_a_bad_value_from_a_flag_is_named_by_its_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGO_DB", "a/b")  # the flag wins: only its value is judged
    with pytest.raises(ValueError, match=r"^--mongo-db='c\$d' is not a database name"):
        Settings.from_env(mongo_db="c$d")


def test_replace_checks_the_new_values_like_the_environment() -> None:
    with pytest.raises(ValueError, match="KAFKA_PARTITIONS=0 must be a whole number from 1 to 10000"):
        Settings().replace(kafka_partitions=0)


def test_every_setting_is_declared_with_its_variable_section_and_help() -> None:
    from lakehouse.core.config import ENV_NAMES, SECTIONS

    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        assert isinstance(extra, dict) and extra["section"] in SECTIONS and info.description, name
        assert ENV_NAMES[name] == extra["env"] and extra["env"].isupper(), name
    assert len(set(ENV_NAMES.values())) == len(ENV_NAMES)


def test_the_readme_table_is_the_declaration() -> None:
    from lakehouse.core.config import settings_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert settings_table() in readme, "README's settings table is stale: paste `lakehouse config --table`"


def test_config_prints_each_value_with_its_source_and_masks_passwords(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from lakehouse.app.cli import cli

    env = {"MONGO_URI": "mongodb://admin:S3cretPW@db.example:27017/?replicaSet=rs0", "KAFKA_PARTITIONS": "6",
           "STATE_DIR": str(tmp_path / "state"), "LAKE_PATH": "", "TRIGGER_SECONDS": "0.5"}
    result = CliRunner().invoke(cli, ["--kafka", "k1:9093", "config", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert "S3cretPW" not in result.output
    rows = {row["variable"]: row for row in json.loads(result.output)}
    assert set(rows) == set(Settings.model_fields[name].json_schema_extra["env"]  # type: ignore[index]
                            for name in Settings.model_fields)
    assert rows["MONGO_URI"]["value"] == "mongodb://admin:***@db.example:27017/?replicaSet=rs0"
    assert (rows["MONGO_URI"]["source"], rows["KAFKA_PARTITIONS"]["source"]) == ("env", "env")
    assert rows["KAFKA_BOOTSTRAP_SERVERS"] == {"section": "connections", "variable": "KAFKA_BOOTSTRAP_SERVERS",
                                               "value": "k1:9093", "source": "flag --kafka"}
    assert rows["LAKE_PATH"]["source"] == "default"  # an empty variable is unset
    assert rows["TRIGGER_SECONDS"]["value"] == "0.5" and rows["SESSION_GAP"]["source"] == "default"
    plain = CliRunner().invoke(cli, ["config"], env=env)
    assert plain.exit_code == 0 and "[monitoring]" in plain.output and "S3cretPW" not in plain.output
    assert not (tmp_path / "state").exists()  # printing the settings creates nothing


def test_each_stage_reads_only_the_connections_and_its_own_section() -> None:
    """producer/, streaming/ and warehouse/ read a setting only of the `connections` section (where the
    servers and the data are; the names derived from them too) or of their own: a stage never depends on
    another stage's tuning, nor on monitoring or the local servers."""
    import ast

    from lakehouse.core.config import STAGE_SECTIONS, section_of

    read: list[tuple[str, str, int, str, str]] = []
    for stage, allowed in STAGE_SECTIONS.items():
        for module in sorted((Path(__file__).parents[2] / stage).glob("*.py")):
            for node in ast.walk(ast.parse(module.read_text())):
                if isinstance(node, ast.Attribute) and (section := section_of(node.attr)) is not None:
                    read.append((stage, module.name, node.lineno, node.attr, section))
                    assert section in allowed, f"{stage}/{module.name}:{node.lineno} reads {node.attr} ({section})"
    assert {stage for stage, *_ in read} == set(STAGE_SECTIONS)  # the check sees each stage's reads


def test_a_stage_is_handed_only_the_connections_and_its_own_section(tmp_path: Path) -> None:
    """What a stage's entry points narrow their settings to: the connections, the stage's own section and
    the names derived from them answer; another stage's, monitoring's or the servers' settings fail where
    they are read, naming the setting; the view stays a view through replace() and pickling (Spark ships
    closures), and one stage's view is never accepted by another stage."""
    import pickle

    from lakehouse.core.config import OtherSection, StageSettings, for_stage

    full = Settings.from_env(lake_path=tmp_path / "lake", max_rows_per_batch=123)
    streaming = for_stage(full, "streaming")
    assert isinstance(streaming, StageSettings) and for_stage(streaming, "streaming") is streaming
    assert streaming.kafka_bootstrap_servers == full.kafka_bootstrap_servers  # connections
    assert streaming.max_rows_per_batch == 123  # its own section
    assert streaming.table_path("silver") == full.table_path("silver") and streaming.topics == full.topics
    for other in ("kafka_partitions", "warehouse_path", "streaming_metrics_port", "stack_dir"):
        with pytest.raises(OtherSection, match=f"the streaming stage read {other}"):
            getattr(streaming, other)
    with pytest.raises(OtherSection):
        streaming.section("monitoring")
    with pytest.raises(OtherSection):
        streaming.replace(warehouse_path=tmp_path / "w.duckdb")
    smaller = streaming.replace(max_rows_per_batch=7)
    assert isinstance(smaller, StageSettings) and smaller.max_rows_per_batch == 7
    assert streaming.max_rows_per_batch == 123
    shipped = pickle.loads(pickle.dumps(streaming))
    assert isinstance(shipped, StageSettings) and shipped.max_rows_per_batch == 123
    assert "WAREHOUSE_PATH" not in streaming.to_env() and streaming.to_env()["MAX_ROWS_PER_BATCH"] == "123"
    with pytest.raises(AttributeError):
        streaming.max_rows_per_batch = 5  # type: ignore[misc]
    with pytest.raises(OtherSection, match="handed the streaming stage's settings"):
        for_stage(streaming, "warehouse")
    assert for_stage(full, "warehouse").warehouse_path == full.warehouse_path
