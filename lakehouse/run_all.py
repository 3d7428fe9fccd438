"""`make run-all`: servers up, producer and streaming job as processes, a bounded burst of order
changes, the warehouse loaded until it equals MongoDB, then one `reconciled:` line.

The producer and the streaming job run as separate processes, as they would be deployed; their logs
go to <state_dir>/logs and their PIDs to <state_dir>/run, and they are always stopped (SIGTERM,
graceful) before this command returns. The servers stay up unless stop_servers is set.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra import servers
from lakehouse.config import Settings
from lakehouse.mongo import connect as connect_mongo
from producer.generator import OrderGenerator
from warehouse.loader import LakeMissing, load
from warehouse.reconcile import Reconciliation, reconcile


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    pid_file: Path

    def check(self) -> None:
        code = self.process.poll()
        if code is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-25:])
            raise RuntimeError(f"the {self.name} process exited with code {code}; its log {self.log} ends:\n{tail}")

    def stop(self, grace: float = 60.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop within {grace:.0f}s; killing it")
                self.process.kill()
                self.process.wait()
        self.pid_file.unlink(missing_ok=True)


def spawn(settings: Settings, name: str, *args: str) -> Child:
    logs, run = settings.state_dir / "logs", settings.state_dir / "run"
    logs.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "lakehouse.cli", *args], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    pid_file = run / f"{name}.pid"
    pid_file.write_text(str(process.pid))
    say(f"started {name} (pid {process.pid}, log {log})")
    return Child(name, process, log, pid_file)


def wait_until_reconciled(settings: Settings, children: list[Child], timeout: float) -> Reconciliation:
    """Load and reconcile until the warehouse equals MongoDB or the deadline passes (at least once)."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        for child in children:
            child.check()
        with contextlib.suppress(LakeMissing):  # the streaming job (running, checked above) makes it soon
            load(settings)
        result = reconcile(settings)
        if result.ok:
            return result
        if time.monotonic() >= deadline:
            say(f"the warehouse did not catch up within {timeout:.0f}s; see the logs in {settings.state_dir / 'logs'}")
            return result
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            say(f"catching up: source={result.source} warehouse={result.warehouse} "
                f"missing={len(result.missing)} extra={len(result.extra)} mismatched={len(result.mismatched)}")
        time.sleep(1)


def run_all(settings: Settings, events: int, rate: float | None, timeout: float, stop_servers: bool) -> int:
    started = time.monotonic()
    for line in servers.start(settings):
        say(line)
    children: list[Child] = []
    try:
        children.append(spawn(settings, "producer", "produce", "--snapshot", "initial"))
        children.append(spawn(settings, "streaming", "stream"))
        client = connect_mongo(settings, "lakehouse-generator")
        try:
            generator = OrderGenerator.for_database(client[settings.mongo_db], settings.collections)
            t0 = time.monotonic()

            def progress(stats: object) -> None:
                done = generator.stats.total
                rate_now = done / max(time.monotonic() - t0, 1e-6)
                eta = (events - done) / rate_now if rate_now else 0
                say(f"generated {done}/{events} changes ({rate_now:.0f}/s, eta {eta:.0f}s)")
                for child in children:
                    child.check()

            generator.run(events, rate=rate, progress=progress)
        finally:
            client.close()
        result = wait_until_reconciled(settings, children, timeout)
    finally:
        for child in children:
            child.stop()
        if stop_servers:
            for line in servers.stop(settings):
                say(line)
    for line in result.examples():
        say(line)
    say(f"run-all took {time.monotonic() - started:.0f}s; warehouse {settings.warehouse_path}, "
        f"lake {settings.lake_path}")
    say(result.line())
    return 0 if result.ok else 1
