"""A server that exits while starting is reported at once, with its exit code and the log of this run
(not an earlier run's, nor a timeout minutes later)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from infra.processes import StackError, spawn, wait
from lakehouse.core.config import Settings
from tests.helpers import free_port

pytestmark = pytest.mark.unit


def test_a_process_that_exits_while_starting_ends_the_wait_with_its_code_and_this_runs_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("an earlier run's last words\n")
    pid = spawn([sys.executable, "-c", "print('cannot bind the port'); raise SystemExit(3)"], log,
                tmp_path / "server.pid")
    started = time.monotonic()
    with pytest.raises(StackError) as caught:
        wait("a server", lambda: False, log, timeout=60, pid=pid)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "exit code 3" in message and "cannot bind the port" in message
    assert "an earlier run's last words" not in message


def test_mongodb_that_refuses_its_options_is_reported_at_once(tmp_path: Path) -> None:
    from infra import servers

    settings = Settings(mongo_uri=f"mongodb://127.0.0.1:{free_port()}/", stack_dir=tmp_path)
    started = time.monotonic()
    with pytest.raises(StackError, match=r"MongoDB on 127\.0\.0\.1:\d+: the server exited while starting \(exit"):
        servers.start_mongo(settings, ("--no-such-option",))
    assert time.monotonic() - started < 30
