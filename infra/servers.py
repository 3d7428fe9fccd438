"""Start, stop and check the pipeline's servers on this machine.

MongoDB (a replica set, because change streams need one) and Kafka are started only when their
configured address is on loopback; anything else is the user's own server and is left alone. The
embedded defaults are SecantusDB and noida-db (see README, "Why these servers"); each is addressed
only through MONGO_URI / KAFKA_BOOTSTRAP_SERVERS, so real ones drop in unchanged. Every start waits
for readiness with a deadline; every stop stops only what its PID file says this project started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lakehouse.core.config import Settings
from lakehouse.core.errors import LakehouseError, redact

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
READY_TIMEOUT_S = 60.0


class StackError(LakehouseError, RuntimeError):
    """A server did not start or stop; the message names it and its log."""


def _bin(name: str) -> str:
    """Console scripts of this interpreter's environment, found even when the venv is not activated."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise StackError(f"{name} is not installed; run `make setup` first")
    return found


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(what: str, ready: Callable[[], bool], log: Path | None, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except Exception:  # not ready yet: a refused connection looks like any other error here
            pass
        time.sleep(0.2)
    tail = ""
    if log and log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise StackError(f"{what} was not ready within {timeout:.0f}s; log {log}:\n{tail}")


def _mongo_ready(settings: Settings) -> bool:
    from lakehouse.adapters.mongo import is_ready_primary

    return is_ready_primary(settings)


def _kafka_ready(settings: Settings) -> bool:
    from lakehouse.adapters.kafka import is_ready

    return is_ready(settings)


def _use_existing(name: str, where: str, host: str, port: int, ready: Callable[[], bool], log: Path) -> str | None:
    """A server that is not on loopback, or already answers there, is used as it is, never started."""
    if host not in LOOPBACK:
        _wait(f"{name} at {redact(where)}", ready, None, 15)
        return f"{name}: external at {redact(where)}"
    if _port_open(host, port):
        _wait(f"{name} at {host}:{port}", ready, log, 15)
        return f"{name}: already running at {host}:{port} (log {log})"
    return None


# -- MongoDB -------------------------------------------------------------------------------------
def _mongo_dir(settings: Settings) -> Path:
    return settings.stack_dir / "mongodb"


def start_mongo(settings: Settings, extra_args: tuple[str, ...] = ()) -> str:
    """extra_args go to the embedded server, e.g. ("--oplog-max-entries", "200") for a tiny history."""
    host, port = settings.mongo_address
    folder = _mongo_dir(settings)
    log, pid_file = folder / "mongod.log", folder / "mongod.pid"
    existing = _use_existing("MongoDB", settings.mongo_uri, host, port, lambda: _mongo_ready(settings), log)
    if existing:
        return existing
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        _bin("secantusd-py"), "--host", host, "--port", str(port),
        "--storage-path", str(folder / "data"),
        "--oplog-retention-seconds", os.environ.get("MONGO_OPLOG_RETENTION_SECONDS", "604800"),
        *extra_args,
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    pid_file.write_text(str(proc.pid))
    _wait(f"MongoDB on {host}:{port}", lambda: _mongo_ready(settings), log)
    return f"MongoDB: started replica set on {host}:{port} (pid {proc.pid}, log {log})"


def stop_mongo(settings: Settings) -> str:
    pid_file = _mongo_dir(settings) / "mongod.pid"
    if not pid_file.exists():
        return "MongoDB: not started by this project"
    pid = int(pid_file.read_text())
    stopped = _terminate(pid)
    pid_file.unlink(missing_ok=True)
    return f"MongoDB: stopped (pid {pid})" if stopped else f"MongoDB: pid {pid} was not running"


# -- Kafka ---------------------------------------------------------------------------------------
def _kafka_dir(settings: Settings) -> Path:
    return settings.stack_dir / "kafka"


def start_kafka(settings: Settings) -> str:
    host, port = settings.kafka_address
    folder = _kafka_dir(settings)
    log = folder / "noida.log"
    existing = _use_existing("Kafka", settings.kafka_bootstrap_servers, host, port,
                             lambda: _kafka_ready(settings), log)
    if existing:
        return existing
    folder.mkdir(parents=True, exist_ok=True)
    command = [_bin("noida-db"), "up", "--only", "kafka", "--host", host, "--kafka-port", str(port),
               "--data-dir", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise StackError(f"noida-db up failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    (folder / "started-by-lakehouse").write_text(str(time.time()))
    _wait(f"Kafka on {host}:{port}", lambda: _kafka_ready(settings), log)
    return f"Kafka: started broker on {host}:{port} (log {log})"


def stop_kafka(settings: Settings) -> str:
    folder = _kafka_dir(settings)
    marker = folder / "started-by-lakehouse"
    if not marker.exists():
        return "Kafka: not started by this project"
    result = subprocess.run([_bin("noida-db"), "down", "--data-dir", str(folder)], capture_output=True,
                            text=True, stdin=subprocess.DEVNULL)
    marker.unlink(missing_ok=True)
    return "Kafka: stopped" if result.returncode == 0 else f"Kafka: noida-db down said {result.stderr.strip()}"


def kill_kafka(settings: Settings) -> str:
    """SIGKILL the embedded broker, as a crash would (fault tests and `make chaos`); start_kafka restarts it."""
    control = _kafka_dir(settings) / "noida.control.json"
    if not control.exists():
        raise StackError(f"no embedded Kafka to kill at {_kafka_dir(settings)}")
    pid = int(json.loads(control.read_text())["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return f"Kafka: killed (pid {pid})"


# -- processes -----------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(pid: int, grace: float = 20.0) -> bool:
    """SIGTERM, wait, then SIGKILL. False when the process was already gone."""
    if not _alive(pid):
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
        if not _alive(pid):
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


def start(settings: Settings) -> list[str]:
    return [start_mongo(settings), start_kafka(settings)]


def stop(settings: Settings) -> list[str]:
    return [stop_kafka(settings), stop_mongo(settings)]


def status(settings: Settings) -> list[str]:
    lines = []
    for name, check, where in (
        ("MongoDB", _mongo_ready, settings.mongo_uri),
        ("Kafka", _kafka_ready, settings.kafka_bootstrap_servers),
    ):
        try:
            up = check(settings)
        except Exception:
            up = False
        lines.append(f"{name}: {'up' if up else 'DOWN'} at {redact(where)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    try:
        for line in {"start": start, "stop": stop, "status": status}[args.action](settings):
            print(line, flush=True)
    except StackError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
