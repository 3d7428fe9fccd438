"""A MongoDB that cannot serve the pipeline: a standalone server (no change streams) and credentials it
refuses. Each command says so in one line with the fix, exit code 1, and never prints the password."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pymongo import MongoClient

from lakehouse.app.cli import cli
from lakehouse.core.config import Settings
from tests.conftest import wait_for

PASSWORD = "S3cretPW"


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A standalone server (SecantusDB's --standalone: no replica set) with a user admin/S3cretPW."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tmp_path_factory.mktemp("standalone")
    server = Path(sys.executable).parent / "secantusd-py"
    with (folder / "log").open("wb") as log:
        proc = subprocess.Popen([str(server), "--standalone", "--host", "127.0.0.1", "--port", str(port),
                                 "--storage-path", str(folder / "data")], stdout=log, stderr=subprocess.STDOUT)
    try:
        client: MongoClient = MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=1000)

        def ready() -> bool:
            try:
                return bool(client.admin.command("ping"))
            except Exception:
                return False

        wait_for(ready, 60, "the standalone MongoDB to answer")
        client.admin.command("createUser", "admin", pwd=PASSWORD, roles=["root"])
        client.close()
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def _run(settings: Settings, uri: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={**settings.to_env(), "MONGO_URI": uri})
    assert PASSWORD not in result.output, result.output
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


@pytest.mark.parametrize("args", [
    ["produce"],
    ["replay", "--into", "kafka", "--from-time", "2026-01-01T00:00:00Z"],
    ["replay", "--into", "kafka", "--from-beginning", "--dry-run"],
    ["replay", "--into", "kafka", "--from-beginning"],
])
def test_a_standalone_server_is_named_with_the_fix(standalone: int, settings: Settings, args: list[str]) -> None:
    code, output = _run(settings, f"mongodb://admin:{PASSWORD}@127.0.0.1:{standalone}/", *args)
    assert code == 1, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert "is a standalone server, and change streams need a replica set" in errors[0], output
    assert "admin:***@" in errors[0]
    assert "--from-beginning instead" not in output  # the advice that could not work either
    assert not settings.producer_checkpoint.exists()


def test_refused_credentials_are_one_line_naming_the_uri_masked(standalone: int, settings: Settings) -> None:
    uri = f"mongodb://admin:wrong-{PASSWORD}@127.0.0.1:{standalone}/"
    for args in (["generate", "--events", "3"], ["reconcile"], ["replay", "--into", "kafka", "--from-beginning"]):
        code, output = _run(settings, uri, *args)
        assert code == 1, output
        assert "refused this client" in output or "no warehouse" in output, output
    code, output = _run(settings, uri, "status")
    assert "mongodb    unavailable: MongoDB at mongodb://admin:***@" in output, output
    assert "refused this client (authentication failed)" in output, output
