"""Progress lines and one-line errors for servers that are down (no servers needed: closed ports)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from lakehouse.app.cli import cli
from lakehouse.core import logs
from lakehouse.core.progress import Progress
from tests.helpers import free_port


@pytest.fixture
def captured() -> list[logging.LogRecord]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger = logging.getLogger("lakehouse.core.progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)


def test_without_a_terminal_progress_is_log_lines_with_rate_and_eta(captured: list[logging.LogRecord]) -> None:
    progress = Progress("snapshot", total=1000, unit="documents", every=0.0, terminal=False)
    progress.advance(250)
    progress.advance(250)
    progress.close()
    lines = [r.getMessage() for r in captured]
    assert lines[0].startswith("snapshot: 250/1,000 documents (") and "/s, eta " in lines[0], lines
    assert lines[1].startswith("snapshot: 500/1,000 documents ("), lines
    assert lines[-1].startswith("snapshot: 500 documents in "), lines
    figures = captured[1].progress  # type: ignore[attr-defined]
    assert figures["done"] == 500 and figures["total"] == 1000 and figures["eta_s"] is not None


def test_json_logs_carry_the_figures_as_fields(captured: list[logging.LogRecord]) -> None:
    progress = Progress("load: read silver v3", total=10, every=0.0, terminal=False)
    progress.update_to(4)
    body = json.loads(logs.JsonFormatter().format(captured[0]))
    assert body["msg"].startswith("load: read silver v3: 4/10 rows")
    assert body["progress"]["done"] == 4 and body["progress"]["total"] == 10 and body["progress"]["unit"] == "rows"


def test_on_a_terminal_it_is_a_bar_and_short_work_leaves_no_summary(captured: list[logging.LogRecord]) -> None:
    screen = io.StringIO()
    with Progress("replay into lake", total=50, unit="messages", stream=screen, terminal=True) as progress:
        progress.advance(20)
        progress.update_to(50)
    assert "replay into lake" in screen.getvalue() and "messages" in screen.getvalue()
    assert not captured  # well under a second: the bar was enough


def test_unknown_totals_show_count_and_rate_only(captured: list[logging.LogRecord]) -> None:
    progress = Progress("change stream", unit="events", every=0.0, terminal=False)
    progress.advance(7)
    assert captured[0].getMessage().startswith("change stream: 7 events (") and "eta" not in captured[0].getMessage()


@pytest.mark.parametrize("command", [
    ["replay", "--into", "lake", "--from-beginning", "--dry-run"],
    ["stream", "--available-now"],
    ["produce", "--until-idle"],
], ids=lambda c: c[0])
def test_a_stopped_kafka_is_one_line_naming_it_and_what_to_do(tmp_path: Path, command: list[str]) -> None:
    port = free_port()
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "STATE_DIR": str(tmp_path / "state"),
           "LAKE_PATH": str(tmp_path / "lake"), "WAREHOUSE_PATH": str(tmp_path / "w.duckdb"),
           "MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true&serverSelectionTimeoutMS=300"}
    result = CliRunner().invoke(cli, command, env=env)
    assert result.exit_code == 1
    assert f"Kafka at 127.0.0.1:{port} is not reachable" in result.output, result.output
    assert "make servers" in result.output and "KAFKA_BOOTSTRAP_SERVERS" in result.output
    assert "Traceback" not in result.output


def test_a_stopped_mongodb_is_one_line_naming_it_with_the_password_hidden(tmp_path: Path) -> None:
    port = free_port()
    uri = f"mongodb://reader:s3cret@127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=300"
    from lakehouse.core.config import Settings
    from warehouse.connection import open_warehouse

    # a warehouse to reconcile: MongoDB is what is missing
    open_warehouse(Settings.from_env(warehouse_path=tmp_path / "w.duckdb", state_dir=tmp_path)).close()
    result = CliRunner().invoke(cli, ["reconcile"], env={"MONGO_URI": uri, "STATE_DIR": str(tmp_path),
                                                         "WAREHOUSE_PATH": str(tmp_path / "w.duckdb")})
    assert result.exit_code == 1
    assert f"MongoDB at mongodb://reader:***@127.0.0.1:{port}/" in result.output, result.output
    assert "s3cret" not in result.output and "MONGO_URI" in result.output and "Traceback" not in result.output


def test_status_reports_each_unreachable_server_by_address_and_goes_on(tmp_path: Path) -> None:
    kafka, mongo = free_port(), free_port()
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}", "STATE_DIR": str(tmp_path / "state"),
           "MONGO_URI": f"mongodb://127.0.0.1:{mongo}/?directConnection=true&serverSelectionTimeoutMS=300",
           "LAKE_PATH": str(tmp_path / "lake"), "WAREHOUSE_PATH": str(tmp_path / "w.duckdb")}
    result = CliRunner().invoke(cli, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["kafka"]["state"].startswith(f"unavailable: Kafka at 127.0.0.1:{kafka} is not reachable")
    assert report["mongodb"]["state"].startswith(f"unavailable: MongoDB at mongodb://127.0.0.1:{mongo}/")
    assert report["warehouse"]["state"].startswith("no warehouse yet")


@pytest.mark.parametrize(("text", "masked"), [
    ("mongodb://admin:S3cretPW@h:1/", "mongodb://admin:***@h:1/"),
    ("at mongodb://a:p%40ss@h1:1,h2:2/db?replicaSet=rs0 now", "at mongodb://a:***@h1:1,h2:2/db?replicaSet=rs0 now"),
    ("mongodb+srv://u:pw@cluster.example.net/", "mongodb+srv://u:***@cluster.example.net/"),
    ('{"msg": "x mongodb://u:pw@h/"}', '{"msg": "x mongodb://u:***@h/"}'),
    ("authMechanismProperties=AWS_SESSION_TOKEN:tok123&x=1", "authMechanismProperties=AWS_SESSION_TOKEN:***&x=1"),
    ("mongodb://user@h/ and http://127.0.0.1:9090/metrics", "mongodb://user@h/ and http://127.0.0.1:9090/metrics"),
    ("bad URI mongodb://:s3cr3t@host/", "bad URI mongodb://:***@host/"),  # no user name
    ("mongodb://user:s3c@r3t@host/db", "mongodb://user:***@host/db"),  # an unescaped @ in the password
    ("mongodb://u:p@h1:1,h2:2?w=1 and http://x:9090/", "mongodb://u:***@h1:1,h2:2?w=1 and http://x:9090/"),
])
def test_redact_masks_passwords_and_leaves_the_rest(text: str, masked: str) -> None:
    from lakehouse.core.errors import redact

    assert redact(text) == masked


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_every_log_line_masks_passwords_whoever_logs_it(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", fmt)
    try:
        try:
            raise RuntimeError("cannot reach mongodb://admin:S3cretPW@127.0.0.1:1/")
        except RuntimeError:
            logging.getLogger("pymongo.anything").exception("failed on %s", "mongodb://admin:S3cretPW@h/")
        logging.getLogger("lakehouse.x").warning("using mongodb://admin:S3cretPW@h/")
    finally:
        logs.configure("INFO", "plain")
    err = capsys.readouterr().err
    assert "S3cretPW" not in err
    assert err.count("admin:***@") >= 3, err


def test_an_unexpected_traceback_is_printed_with_passwords_masked(capsys: pytest.CaptureFixture[str]) -> None:
    from lakehouse.app.cli import _redacting_excepthook

    try:
        raise KeyError("mongodb://admin:S3cretPW@h/")
    except KeyError as exc:
        _redacting_excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert "Traceback" in err and "admin:***@h/" in err and "S3cretPW" not in err


@pytest.mark.parametrize(("query", "expected"), [("", 5.0), ("&serverSelectionTimeoutMS=300", 0.3),
                                                 ("&SERVERSELECTIONTIMEOUTMS=700", 0.7)])
def test_a_server_selection_timeout_in_the_uri_wins_over_the_commands_default(query: str, expected: float) -> None:
    from lakehouse.adapters.mongo import connect
    from lakehouse.core.config import Settings

    settings = Settings(mongo_uri=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true{query}")
    client = connect(settings, "test", timeout_ms=5000)
    try:
        assert client.options.server_selection_timeout == expected
    finally:
        client.close()


@pytest.mark.parametrize(("dns_says", "raised"), [
    ("The DNS query name does not exist: _mongodb._tcp.c0.example.invalid.", "ConfigError"),
    ("The DNS response does not contain an answer to the question: _mongodb._tcp.c0.example.net.", "ConfigError"),
    ("The resolution lifetime expired after 20.0 seconds", "ServerUnreachable"),
])
def test_a_mongodb_srv_uri_that_dns_does_not_resolve_is_one_line(monkeypatch: pytest.MonkeyPatch, dns_says: str,
                                                                 raised: str) -> None:
    """A name DNS does not know is the operator's URI to fix (exit 2); a DNS that does not answer is a
    server away (retried); the password is masked in both."""
    from pymongo.errors import ConfigurationError

    from lakehouse.adapters import mongo
    from lakehouse.core.config import Settings

    def resolve(*_: object, **__: object) -> None:
        raise ConfigurationError(dns_says)

    monkeypatch.setattr(mongo, "MongoClient", resolve)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - its type is the parameter
        mongo.connect(Settings(mongo_uri="mongodb+srv://u:S3cretPW@c0.example.invalid/"))
    assert type(caught.value).__name__ == raised and "S3cretPW" not in str(caught.value)


def test_a_server_away_is_said_once_per_episode_and_waited_out_with_back_off(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import threading

    from lakehouse.core.backoff import AwayEpisode

    log = logging.getLogger("test.backoff")
    episode, waits = AwayEpisode(log, ceiling=4.0), []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            return False

    with caplog.at_level(logging.INFO, logger="test.backoff"):
        for _ in range(5):
            assert episode.wait(ConnectionError("Kafka at x:1 is not reachable"), Stop()) is False
        episode.over()
        episode.wait(ConnectionError("again"), Stop())
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0, 1.0]  # doubling to the ceiling; a new episode starts over
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("waiting for it" in m for m in said) == 2 and any("answers again" in m for m in said)
    stopped = threading.Event()
    stopped.set()
    assert AwayEpisode(log).wait(ConnectionError("x"), stopped) is True  # a stop ends the wait at once
