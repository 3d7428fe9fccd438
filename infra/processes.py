"""Starting, waiting for and stopping the servers' processes: what every server in infra/ shares."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lakehouse.core.errors import LakehouseError, redact

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0


class StackError(LakehouseError, RuntimeError):
    """A server did not start or stop; the message names it and its log."""


def bin_path(name: str) -> str:
    """Console scripts of this interpreter's environment, found even when the venv is not activated."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise StackError(f"{name} is not installed; run `make setup` first")
    return found


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


RUN_MARK = "--- starting: "  # the line spawn writes to a server's log before each start


def this_run(log: Path | None, lines: int = 20) -> str:
    """The last lines a server wrote to `log` since its latest start (spawn marks each start), not an
    earlier run's."""
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace")
    return "\n".join(text[text.rfind(RUN_MARK):].splitlines()[-lines:]) if RUN_MARK in text else \
        "\n".join(text.splitlines()[-lines:])


def exit_code(pid: int) -> int | None:
    """The exit code of a server this process started, once it has exited (-1 when it is not our child
    and is gone); None while it runs."""
    try:
        finished, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None if alive(pid) else -1
    return os.waitstatus_to_exitcode(status) if finished else None


def raise_if_exited(what: str, pid: int, log: Path | None) -> None:
    """StackError with the exit code and this run's log when the server `pid` has exited."""
    code = exit_code(pid)
    if code is not None:
        raise StackError(f"{what}: the server exited while starting (exit code {code}); log {log}, this run:\n"
                         f"{this_run(log)}")


def wait(what: str, ready: Callable[[], bool], log: Path | None, timeout: float = READY_TIMEOUT_S,
         pid: int | None = None) -> None:
    """Until `ready()`. A server (`pid`) that exits meanwhile, or a StackError from `ready`, ends the wait at
    once with its exit code and this run's log, not a timeout minutes later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except StackError:  # the server's own "it died": said at once, in its words
            raise
        except Exception:  # not ready yet: a refused connection looks like any other error here
            pass
        if pid is not None:
            raise_if_exited(what, pid, log)
        time.sleep(0.2)
    raise StackError(f"{what} was not ready within {timeout:.0f}s; log {log}, this run:\n{this_run(log)}")


def use_existing(name: str, where: str, host: str, port: int, ready: Callable[[], bool], log: Path) -> str | None:
    """A server that is not on loopback, or already answers there, is used as it is, never started."""
    if host not in LOOPBACK:
        wait(f"{name} at {redact(where)}", ready, None, 15)
        return f"{name}: external at {redact(where)}"
    if port_open(host, port):
        wait(f"{name} at {host}:{port}", ready, log, 15)
        return f"{name}: already running at {host}:{port} (log {log})"
    return None


# -- processes -----------------------------------------------------------------------------------
def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate(pid: int, grace: float = 20.0) -> bool:
    """SIGTERM, wait, then SIGKILL. False when the process was already gone."""
    if not alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return True
        except ChildProcessError:
            pass
        if not alive(pid):
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


# -- started processes ---------------------------------------------------------------------------
def spawn(command: list[str], log: Path, pid_file: Path, env: dict[str, str] | None = None) -> int:
    """Start a server in its own session (a kill of its group takes its children too), its PID recorded."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n{RUN_MARK}{time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def running(pid_file: Path) -> int | None:
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    return pid if alive(pid) else None


def stop_pid_file(name: str, pid_file: Path, grace: float = 20.0) -> str:
    if not pid_file.exists():
        return f"{name}: not started by this project"
    pid = int(pid_file.read_text())
    stopped = terminate(pid, grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # what it started (a worker's executors) goes with it
    pid_file.unlink(missing_ok=True)
    return f"{name}: stopped (pid {pid})" if stopped else f"{name}: pid {pid} was not running"
