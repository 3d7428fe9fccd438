"""`make run-all`: servers up, producer and streaming job as processes, a bounded burst of order
changes, the warehouse loaded until it equals MongoDB, then one `reconciled:` line. With `--follow`
(`make run-all FOLLOW=1`) it is a live demo instead: changes keep coming and a one-line status
follows them until Ctrl-C.

The producer and the streaming job run as separate processes, as they would be deployed, each in a
process group of its own (so a terminal's Ctrl-C reaches only run-all, which then stops them in
order); their logs go to <state_dir>/logs and their PIDs to <state_dir>/run, and they are always
stopped (SIGTERM, graceful; a second Ctrl-C or the grace period kills their whole group) before this
command returns. The servers stay up unless stop_servers is set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from infra import servers
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.app.reconcile import Reconciliation, combined, lines, reconcile_each, record
from lakehouse.app.service import LoaderService
from lakehouse.app.status import collect, one_line
from lakehouse.core import metrics
from lakehouse.core.config import Settings
from lakehouse.core.errors import LakehouseError, redact
from lakehouse.core.logs import cli_options as logging_options
from lakehouse.core.progress import Progress
from lakehouse.core.stopping import Interrupted, StopSignals
from producer.generator import OrderGenerator
from warehouse.errors import LakeMissing
from warehouse.lake import require_matching_lake
from warehouse.loader import load, load_if_possible

FOLLOW_RATE = 20.0  # changes/s in --follow when no rate is given: lively, and the disk fills slowly


def say(message: str) -> None:
    print(redact(message), flush=True)


class ChildFailed(LakehouseError, RuntimeError):
    """A process run-all started kept dying; the message names it and its log."""


MAX_RESTARTS = 5  # a child that dies this many times in a row, each within RESTART_WINDOW_S of its start
RESTART_WINDOW_S = 60.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    pid_file: Path
    settings: Settings
    args: tuple[str, ...]
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0
    quick_deaths: int = 0

    def check(self) -> None:
        """Restart the child if it died, with its cause in its log and on run-all's output; give up (raise)
        when it keeps dying within a minute of each start."""
        code = self.process.poll()
        if code is None:
            return
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-25:])
        quick = time.monotonic() - self.started < RESTART_WINDOW_S
        self.quick_deaths = self.quick_deaths + 1 if quick else 1
        if self.quick_deaths > MAX_RESTARTS:
            raise ChildFailed(f"the {self.name} process exited with code {code}"
                               f"{f' {self.quick_deaths} times in a row' if self.quick_deaths > 1 else ''}; "
                               f"its log {self.log} ends:\n{tail}")
        cause = next((line for line in reversed(tail.splitlines()) if line.strip()), "no output")
        delay = min(2.0 ** (self.quick_deaths - 1), 30.0)
        say(f"{self.name} exited with code {code} ({cause.strip()[:200]}); restarting it in {delay:.0f}s "
            f"(log {self.log})")
        time.sleep(delay)
        fresh = spawn(self.settings, self.name, *self.args)
        self.process, self.started, self.restarts = fresh.process, fresh.started, self.restarts + 1

    def kill(self) -> None:
        """SIGKILL the child's whole process group (the streaming job's JVM included)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def stop_all(children: list[Child], grace: float = 60.0) -> None:
    """SIGTERM every child at once and wait for each to finish its work in hand; after `grace`
    seconds, or at a second Ctrl-C (or SIGTERM), kill what is still running."""
    with StopSignals() as again:
        for child in children:
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + grace
        for child in children:
            while child.process.poll() is None:
                if again.requested.is_set() or time.monotonic() > deadline:
                    why = "before the second Ctrl-C" if again.requested.is_set() else f"within {grace:.0f}s"
                    say(f"{child.name} did not stop {why}; killing it")
                    child.kill()
                    break
                again.requested.wait(0.1)
            say(f"stopped {child.name} (exit code {child.process.returncode})")
            child.pid_file.unlink(missing_ok=True)


def _stop_with_parent() -> None:
    """In the child: SIGTERM when run-all dies, however it dies (a SIGKILL too), so nothing it started is left
    running on its own (Linux's PR_SET_PDEATHSIG; elsewhere the children outlive a killed run-all)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(settings: Settings, name: str, *args: str) -> Child:
    logs, run = settings.state_dir / "logs", settings.state_dir / "run"
    logs.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "lakehouse.app.cli", *logging_options(), *args], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, process_group=0,
                                   preexec_fn=_stop_with_parent)
    pid_file = run / f"{name}.pid"
    pid_file.write_text(str(process.pid))
    say(f"started {name} (pid {process.pid}, log {log})")
    return Child(name, process, log, pid_file, settings, args)


def start_monitoring(settings: Settings) -> list[Child]:
    """run-all loads the warehouse itself, so it serves the loader's metrics; the monitor (lag, freshness,
    reconcile) runs beside it. A metrics port in use is said and skipped: monitoring never stops a run."""
    metrics.serve(settings, "loader")
    port = settings.monitor_metrics_port
    if not port:
        return []
    if not port_free(settings.metrics_host, port):
        say(f"monitor not started: {settings.metrics_host}:{port} is in use (set MONITOR_METRICS_PORT)")
        return []
    return [spawn(settings, "monitor", "metrics", "--serve")]


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_until_reconciled(settings: Settings, children: list[Child], timeout: float,
                          signals: StopSignals) -> list[Reconciliation]:
    """Load and reconcile until the warehouse equals MongoDB or the deadline passes (at least once)."""
    deadline = time.monotonic() + timeout
    with Progress("warehouse catching up", unit="documents") as progress:
        while True:
            for child in children:
                child.check()
            load_if_possible(settings)  # the streaming job makes the lake soon
            signals.check()
            if not settings.warehouse_path.exists():  # nothing loaded yet: the lake is still being made
                signals.wait(1)
                continue
            results = reconcile_each(settings)
            result = combined(results)
            progress.update_to(result.source - len(result.missing) - len(result.mismatched), total=result.source)
            if result.ok:
                return results
            if time.monotonic() >= deadline:
                say(f"the warehouse did not catch up within {timeout:.0f}s; see the logs in "
                    f"{settings.state_dir / 'logs'}")
                return results
            signals.wait(1)


def generate(generator: OrderGenerator, events: int, rate: float | None, children: list[Child],
             signals: StopSignals) -> None:
    with Progress("generate", total=events, unit="changes") as progress:

        def step(_: object) -> None:
            progress.update_to(generator.stats.total)
            for child in children:
                child.check()

        generator.run(events, rate=rate, progress=step, stop=signals.requested.is_set)
        signals.check()


def follow(settings: Settings, generator: OrderGenerator, children: list[Child], rate: float,
           every: float, signals: StopSignals, reconcile_every: float | None = None) -> None:
    """Generate `rate` changes a second, load the warehouse and print one status line every `every`
    seconds, until interrupted; with `reconcile_every`, reconcile and repair that often."""
    say(f"following: {rate:g} changes/s into MongoDB, a status line every {every:g}s; Ctrl-C stops everything")
    loader_log = logging.getLogger("warehouse.loader")
    if loader_log.getEffectiveLevel() == logging.INFO:
        loader_log.setLevel(logging.WARNING)  # the status line says what each load did
    service = LoaderService(settings, every, reconcile_every, True,
                            min(15.0, reconcile_every / 2) if reconcile_every else 15.0, say=say, wait=signals.wait)
    tick = time.monotonic()
    while True:
        # Generating fills what is left of the interval after loading and collecting the status.
        tick = max(tick + every, time.monotonic() + 0.5)
        while (left := tick - time.monotonic()) > 0:
            generator.run(max(1, round(rate * min(left, 0.5))), rate=rate, stop=signals.requested.is_set)
            signals.check()
        for child in children:
            child.check()
        service.round()
        signals.check()
        restarts = ", ".join(f"{c.name} restarted {c.restarts}x" for c in children if c.restarts)
        say(f"{one_line(collect(settings))} | generated {generator.stats.total:,}"
            + (f" | {restarts}" if restarts else ""))


def run_all(settings: Settings, events: int, rate: float | None, timeout: float, stop_servers: bool,
            violations: float = 0.0,
            follow_every: float | None = None, reconcile_every: float | None = None) -> int:
    """The bounded run (exit 0 when reconciled), or with `follow_every` the live demo (exit 0 when
    stopped by Ctrl-C or SIGTERM and everything it started has stopped)."""
    if settings.warehouse_path.exists():
        require_matching_lake(settings)  # before anything starts: a warehouse of another lake never loads
    started = time.monotonic()
    children: list[Child] = []
    results: list[Reconciliation] | None = None
    try:
        with StopSignals() as signals:
            try:
                for line in servers.start(settings):
                    say(line)
                signals.check()
                children.append(spawn(settings, "producer", "produce", "--snapshot", "when_needed"))
                children.append(spawn(settings, "streaming", "stream"))
                children += start_monitoring(settings)
                client = connect_mongo(settings, "lakehouse-generator")
                try:
                    generator = OrderGenerator.for_database(client[settings.mongo_db], settings.collections,
                                                            violations=violations)
                    if follow_every is not None:
                        follow(settings, generator, children, rate or FOLLOW_RATE, follow_every, signals,
                               reconcile_every)
                    generate(generator, events, rate, children, signals)
                finally:
                    client.close()
                results = wait_until_reconciled(settings, children, timeout, signals)
            except Interrupted:
                say("interrupted: stopping the processes run-all started (Ctrl-C again kills them)")
    finally:
        try:
            stop_all(children)
        finally:
            if stop_servers:
                for line in servers.stop(settings):
                    say(line)
    if results is None:
        with contextlib.suppress(LakeMissing):
            load(settings)  # what the lake got before the stop
        say(one_line(collect(settings)))
        say(f"stopped after {time.monotonic() - started:.0f}s; warehouse {settings.warehouse_path}, "
            f"lake {settings.lake_path}; `lakehouse status` says more")
        return 0 if follow_every is not None else 130
    total = combined(results)
    for line in total.examples():
        say(line)
    record(settings, results)
    say(f"run-all took {time.monotonic() - started:.0f}s; warehouse {settings.warehouse_path}, "
        f"lake {settings.lake_path}")
    for line in lines(results):
        say(line)
    return 0 if total.ok else 1
