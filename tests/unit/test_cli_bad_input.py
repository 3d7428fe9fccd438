"""Bad command-line and configuration values: one line naming the value and what to do, exit code 2
for usage, and nothing created or changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from lakehouse.app.cli import cli


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Loopback servers that are not there, and folders in a scratch place."""
    return {"MONGO_URI": "mongodb://127.0.0.1:1/", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "LAKE_PATH": str(tmp_path / "lake"), "WAREHOUSE_PATH": str(tmp_path / "wh.duckdb"),
            "STATE_DIR": str(tmp_path / "state"), "STACK_DIR": str(tmp_path / "stack")}


@pytest.mark.parametrize(("variables", "args", "says"), [
    ({"COLLECTIONS": "../x"}, ["status"], "COLLECTIONS: '../x'"),
    ({"COLLECTIONS": "x y,$cmd"}, ["status"], "'x y' is not a collection"),
    ({"COLLECTIONS": ", ,"}, ["status"], "COLLECTIONS names no collection"),
    ({"COLLECTIONS": "a.b,a_b"}, ["status"], "'a.b' and 'a_b' would both be the warehouse table 'a_b'"),
    ({"MONGO_DB": "a/b"}, ["status"], "MONGO_DB='a/b'"),
    ({"KAFKA_PARTITIONS": "0"}, ["status"], "KAFKA_PARTITIONS=0 must be a whole number from 1 to 10000"),
    ({"KAFKA_PARTITIONS": "99999999999"}, ["produce"], "KAFKA_PARTITIONS=99999999999 must be a whole number from 1"),
    ({"KAFKA_REPLICATION_FACTOR": "99999"}, ["produce"], "KAFKA_REPLICATION_FACTOR=99999 must be 1 to 100"),
    ({"SPARK_MASTER": "nonsense"}, ["stream"], "SPARK_MASTER='nonsense' is not a Spark master URL"),
    ({"HIGH_VALUE_THRESHOLDS": "USD:lots"}, ["stream"], "HIGH_VALUE_THRESHOLDS='USD:lots' is not CODE:AMOUNT"),
    ({"MAX_ROWS_PER_BATCH": "99999999999999999999"}, ["stream"], "MAX_ROWS_PER_BATCH=99999999999999999999 must be"),
    ({"MONGO_OPLOG_MAX_ENTRIES": str(2 ** 49)}, ["status"], f"MONGO_OPLOG_MAX_ENTRIES={2 ** 49} must be a whole"),
    ({"MONGO_URI": "mongodb://:S3cretPW@host/"}, ["config"], "MONGO_URI='mongodb://:***@host/'"),
    ({"MONGO_URI": "mongodb://user:S3cretPW@x@host/"}, ["config"], "MONGO_URI='mongodb://user:***@host/'"),
    ({"KAFKA_PARTITIONS": "three"}, ["status"], "KAFKA_PARTITIONS='three' is not a whole number"),
    ({"TRIGGER_SECONDS": "nan"}, ["status"], "TRIGGER_SECONDS=nan"),
    ({"MONGO_URI": "mongodb://[::1"}, ["status"], "MONGO_URI='mongodb://[::1' is not a MongoDB URI"),
    ({"MONGO_URI": "mongodb://admin:S3cretPW@[::1"}, ["status"], "admin:***@"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:notaport"}, ["status"], "is not host:port"),
    ({"KAFKA_FAIL_ON_DATA_LOSS": "maybe"}, ["status"], "KAFKA_FAIL_ON_DATA_LOSS='maybe' is not true or false"),
    ({"KAFKA_CLIENT": "librdkafka"}, ["status"],
     "KAFKA_CLIENT='librdkafka' is not one of: confluent, kafka-python"),
    ({"EVENT_TIME": "now"}, ["status"], "EVENT_TIME='now' is not one of: cluster_time, order_updated_at"),
    ({"MONGO_OPLOG_RETENTION_SECONDS": "0"}, ["status"], "MONGO_OPLOG_RETENTION_SECONDS=0 must be a positive"),
    ({"MONGO_OPLOG_MAX_ENTRIES": "5"}, ["status"], "MONGO_OPLOG_MAX_ENTRIES=5 must be a whole number from 1000"),
    ({"TRIGGER_SECONDS": "inf"}, ["status"], "TRIGGER_SECONDS=inf must be a positive number"),
    ({"KAFKA_PARTITIONS": "2.5"}, ["status"], "KAFKA_PARTITIONS='2.5' is not a whole number"),
    ({}, ["--kafka", "nohost", "status"], "KAFKA_BOOTSTRAP_SERVERS='nohost': 'nohost' is not host:port"),
    ({"INVENTORY_CRITICAL": "30"}, ["status"], "INVENTORY_CRITICAL=30 and INVENTORY_LOW=20: give 0 <= critical < low"),
    ({"INVENTORY_LOW": "few"}, ["status"], "INVENTORY_LOW='few' is not a whole number"),
    ({"SESSION_GAP": "30m"}, ["status"], "SESSION_GAP='30m' is not a duration Spark reads"),
    ({"WATERMARK_DELAY": "ten minutes"}, ["status"], "WATERMARK_DELAY='ten minutes' is not a duration Spark reads"),
    ({}, ["generate", "--events", "-5"], "'--events': -5 is not in the range"),
    ({}, ["generate", "--events", "0"], "'--events': 0 is not in the range"),
    ({}, ["generate", "--rate", "0"], "'--rate'"),
    ({}, ["generate", "--rate", "-1"], "'--rate'"),
    ({}, ["generate", "--rate", "nan"], "nan is not a number"),
    ({}, ["metrics", "--serve", "--port", "99999"], "'--port': 99999 is not in the range"),
    ({"PRODUCER_METRICS_PORT": "70000"}, ["status"], "PRODUCER_METRICS_PORT=70000 is not a TCP port"),
    ({"LOADER_METRICS_PORT": "http"}, ["status"], "LOADER_METRICS_PORT='http' is not a whole number"),
    ({}, ["replay", "--into", "kafka", "--from-time", "9999-12-31T23:59:59Z"], "outside what MongoDB's"),
    ({}, ["replay", "--into", "kafka", "--from-time", "0001-01-01"], "outside what MongoDB's"),
    ({}, ["replay", "--into", "lake", "--from-offsets", "t:0:99999999999999999999999"], "offset below 2^63"),
    ({}, ["replay", "--into", "lake", "--from-offsets", "t:-1:5"], "partition and offset must be whole"),
    ({}, ["replay", "--into", "kafka", "--from-offsets", "t:0:5"], "not a position in MongoDB"),
    ({}, ["reconcile", "--collection", "nope"], "--collection 'nope' is not a captured collection"),
    ({}, ["reconcile", "--settle", "-1"], "'--settle': -1.0 is not in the range"),
    ({}, ["reconcile", "--settle", "nan"], "nan is not a number"),
    ({}, ["load", "--every", "-5"], "'--every': -5.0 is not in the range"),
    ({}, ["load", "--every", "0"], "'--every': 0.0 is not in the range"),
    ({}, ["load", "--every", "nan"], "nan is not a number"),
    ({}, ["load", "--every", "inf"], "'--every': inf is not in the range"),
    ({}, ["load", "--every", "5", "--reconcile-every", "-1"], "'--reconcile-every': -1.0 is not in the range"),
    ({}, ["load", "--settle", "nan"], "nan is not a number"),
    ({}, ["run-all", "--every", "nan"], "nan is not a number"),
    ({}, ["run-all", "--timeout", "-3"], "'--timeout': -3.0 is not in the range"),
    ({}, ["run-all", "--rate", "nan"], "nan is not a number"),
    ({"EVENTS": "-1"}, ["run-all"], "'--events': -1 is not in the range"),
    ({}, ["generate", "--violations", "nan"], "nan is not a number"),
])
def test_bad_values_are_one_line_with_exit_code_2_and_create_nothing(env: dict[str, str], tmp_path: Path,
                                                                     variables: dict, args: list[str],
                                                                     says: str) -> None:
    result = CliRunner().invoke(cli, args, env={**env, **variables})
    assert result.exit_code == 2, result.output
    assert says in result.output, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "S3cretPW" not in result.output
    assert not any(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())


def test_paths_through_a_file_are_refused(env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for variable, value in (("WAREHOUSE_PATH", blocker / "wh.duckdb"), ("LAKE_PATH", blocker / "lake"),
                            ("STATE_DIR", blocker / "state")):
        result = CliRunner().invoke(cli, ["status"], env={**env, variable: str(value)})
        assert result.exit_code == 2 and f"goes through {blocker}, which is a file" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_reconcile_of_a_mistyped_warehouse_path_creates_nothing(env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["reconcile"], env={**env, "WAREHOUSE_PATH": str(tmp_path / "typo.duckdb")})
    assert result.exit_code == 1 and "no warehouse at" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "typo.duckdb").exists() and not any(tmp_path.iterdir())


def test_the_servers_script_refuses_a_bad_value_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from infra import servers

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:notaport")
    monkeypatch.setenv("MONGO_URI", "mongodb://admin:S3cretPW@127.0.0.1:1/")
    assert servers.main(["start"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: KAFKA_BOOTSTRAP_SERVERS='127.0.0.1:notaport'") and err.count("\n") == 1, err
    assert "S3cretPW" not in err
