"""`make chaos`: the pipeline under faults for several minutes, then the warehouse must equal MongoDB.

Runs its own MongoDB and Kafka (free loopback ports, a scratch folder), the producer, the streaming
job and the loader service (which reconciles and repairs periodically) as separate processes, and a
generator at ~150 changes/s. A witness (MongoDB's own change history from before anything started)
says which changes were made. Meanwhile it SIGKILLs the producer, the streaming job (driver, JVM and
Python workers) and the loader at random moments, restarts MongoDB gracefully, restarts Kafka
(Apache Kafka, one broker) gracefully once and SIGKILLs it once, deletes and re-creates the orders topic
under the running pipeline (a loss made on purpose: it must be noticed and repaired), and holds a
read-only reader on the warehouse. This harness is
the service manager: it restarts a killed (or exited) stage at once and measures how long the stage
takes to make progress again. Then the generator stops, everything drains with no manual step, and it
requires: reconcile 0/0/0, no duplicate change_id, every witnessed change in the fact table, every
stage back within RECOVERY_LIMIT_S after each kill, no Kafka data loss found after the broker's graceful
restart or its SIGKILL (a real broker keeps what it acknowledged), and the re-created topic's loss found.
It prints a summary and exits 0 only if all hold.

`--faults none` (no fault at all) and `--faults restarts` (the streaming job SIGKILLed once, the broker
restarted once) check that reconcile never cries wolf: with nothing lost, every periodic round of the
loader reports 0 differences and repairs 0 documents. `--plant` removes documents from the warehouse,
changes others and adds rows MongoDB never had, three times while the generator runs: the rounds must
find and repair those and no others (a planted document a later change set right needs no repair).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pymongo.errors import PyMongoError

from infra import kafka_broker, servers
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from tests.helpers import free_port, read_topic, witness_changes

LOSS_LINE = "KAFKA LOST ACKNOWLEDGED RECORDS"  # the producer's error line when Kafka holds less than it acked
RECOVERY_LIMIT_S = {"producer": 60.0, "streaming": 240.0, "loader": 60.0}
KAFKA_PAUSE_S = 45.0  # longer than every Kafka client's own timeout (30 s)


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def descendants(pid: int) -> list[int]:
    """pid and every process below it (the streaming job's JVM and its Python workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


@dataclass
class Stage:
    name: str
    args: tuple[str, ...]
    progress: Callable[[], float]  # a number that grows while the stage works
    process: subprocess.Popen[bytes] | None = None
    kills: int = 0
    exits: int = 0
    recoveries: list[float] = field(default_factory=list)


FAULTS = ("all", "restarts", "none")
ROUND = re.compile(r"^reconciled: source=\d+ warehouse=\d+ missing=(\d+) extra=(\d+) mismatched=(\d+)(.*)$")
REPAIRED = "repair: documents "


class Chaos:
    def __init__(self, base: Path, minutes: float, rate: float, seed: int, faults: str = "all",
                 plant: bool = False) -> None:
        self.base, self.minutes, self.rate, self.faults, self.plant = base, minutes, rate, faults, plant
        self.planted: dict[str, tuple[str, tuple[int, int]]] = {}  # "collection/doc_id" -> (how, version)
        self.rng = random.Random(seed)
        self.settings = Settings.from_env(
            mongo_uri=f"mongodb://127.0.0.1:{free_port()}/", kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
            stack_dir=base / "servers", lake_path=base / "lake", warehouse_path=base / "warehouse.duckdb",
            state_dir=base / "state", mongo_db="chaos", topic_prefix="chaos")
        self.logs = base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        s = self.settings
        self.stages = {
            "producer": Stage("producer", ("produce", "--snapshot", "when_needed"),
                              lambda: s.producer_checkpoint.stat().st_mtime if s.producer_checkpoint.exists() else 0),
            "streaming": Stage("streaming", ("stream",), lambda: self._lines(s.batch_metrics)),
            "loader": Stage("loader", ("load", "--every", "2", "--reconcile-every", "30", "--settle", "20"),
                            lambda: self._lines(self.logs / "loader.log", "loaded delta version")
                            + self._lines(self.logs / "loader.log", "loader ready")),
        }
        self.events: list[str] = []
        # (fault, Kafka losses found so far by the producer, by the streaming source) at each Kafka fault:
        # what is found until the next one is that fault's.
        self.loss_marks: list[tuple[str, int, int]] = []
        self.destroyed: set[str] = set()  # change_ids the re-created topic held when it was deleted
        self.deleted_at: tuple[int, int] | None = None  # cluster time of the newest change the topic held
        # Where the producer's saved token was then (everything before it was acknowledged), and what the
        # other topics held: of the changes between the two, those no topic held were in the producer's
        # hands, unpublished, when its re-snapshot replaced them.
        self.saved_at: tuple[int, int] | None = None
        self.held_elsewhere: set[str] = set()
        self.stop_generating = threading.Event()
        self.generated = 0
        self.pause_exits = 0  # stages that ended while Kafka was paused (pause_kafka)

    @staticmethod
    def _lines(path: Path, containing: str = "") -> float:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if containing in line) \
            if path.exists() else 0

    # -- processes ---------------------------------------------------------------------------------
    def start(self, stage: Stage) -> None:
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        with (self.logs / f"{stage.name}.log").open("ab") as out:
            stage.process = subprocess.Popen([sys.executable, "-m", "lakehouse.app.cli", *stage.args], env=env,
                                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             process_group=0)

    def kill(self, stage: Stage) -> None:
        assert stage.process is not None
        before = stage.progress()
        for pid in reversed(descendants(stage.process.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stage.process.wait()
        stage.kills += 1
        killed_at = time.monotonic()
        self.start(stage)
        threading.Thread(target=self._time_recovery, args=(stage, before, killed_at), daemon=True).start()
        self.note(f"SIGKILL {stage.name} (and its children); restarted")

    def _time_recovery(self, stage: Stage, before: float, killed_at: float) -> None:
        deadline = killed_at + 900
        while time.monotonic() < deadline:
            if stage.progress() > before:
                stage.recoveries.append(time.monotonic() - killed_at)
                return
            time.sleep(0.25)
        stage.recoveries.append(float("inf"))

    def supervise(self) -> None:
        """Restart a stage that exited by itself (e.g. a server it needs went away)."""
        for stage in self.stages.values():
            if stage.process is not None and stage.process.poll() is not None:
                stage.exits += 1
                self.note(f"{stage.name} exited by itself (code {stage.process.returncode}); restarted")
                self.start(stage)

    def note(self, what: str) -> None:
        self.events.append(what)
        say(what)

    # -- load ---------------------------------------------------------------------------------------
    def generate(self) -> None:
        generator: OrderGenerator | None = None
        started = time.monotonic()
        while not self.stop_generating.is_set():
            try:
                if generator is None:
                    # Orders, and customers and products (every captured collection) now and then.
                    generator = OrderGenerator.for_database(connect_mongo(self.settings)[self.settings.mongo_db],
                                                            self.settings.collections,
                                                            seed=self.rng.randrange(1 << 30))
                # The steps due by now, sent together: on a busy machine a write at a time is held to a few
                # dozen per second by its round trips, well under the rate asked for.
                due = min(100, max(1, int((time.monotonic() - started) * self.rate) - self.generated))
                generator.steps(due)
                self.generated += due
            except PyMongoError:
                generator = None  # MongoDB is restarting: reconnect and go on
                time.sleep(0.5)
            ahead = started + self.generated / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def hold_reader(self, seconds: float) -> None:
        code = ("import sys, time\nfrom pathlib import Path\nfrom warehouse.connection import connect\n"
                "con = connect(Path(sys.argv[1]), read_only=True)\n"  # waits while the loader writes
                "time.sleep(float(sys.argv[2]))\n")
        if self.settings.warehouse_path.exists():
            subprocess.Popen([sys.executable, "-c", code, str(self.settings.warehouse_path), str(seconds)])
            self.note(f"a reader holds the warehouse read-only for {seconds:.0f}s")

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> int:
        s = self.settings
        for line in servers.start(s):
            say(line)
        for stage in self.stages.values():
            self.start(stage)
        # The witness starts once the producer's stream is open: what was made before is in its snapshot.
        deadline = time.monotonic() + 120
        while not s.producer_checkpoint.exists():
            assert time.monotonic() < deadline, "the producer did not open its stream within 120s"
            self.supervise()
            time.sleep(0.2)
        client = connect_mongo(s)
        began = client[s.mongo_db].command("ping")["operationTime"]
        client.close()
        generator = threading.Thread(target=self.generate, daemon=True)
        generator.start()
        started = time.monotonic()
        duration = self.minutes * 60
        faults: list[tuple[float, Callable[[], None]]] = []
        if self.faults == "all":
            for name in ("producer", "streaming", "loader"):
                for _ in range(3):
                    faults.append((self.rng.uniform(0.1, 0.9) * duration, lambda n=name: self.kill(self.stages[n])))
            faults.append((0.3 * duration, self.restart_mongo))
            faults.append((0.5 * duration, self.restart_kafka))
            faults.append((0.7 * duration, self.kill_kafka))
            faults.append((0.85 * duration, self.recreate_orders_topic))
            faults.append((0.4 * duration, lambda: self.hold_reader(15)))
            faults.append((0.6 * duration, lambda: self.pause_kafka(KAFKA_PAUSE_S)))
        elif self.faults == "restarts":
            faults.append((0.3 * duration, lambda: self.kill(self.stages["streaming"])))
            faults.append((0.6 * duration, self.restart_kafka))
        if self.plant:
            faults += [(at * duration, self.plant_losses) for at in (0.25, 0.5, 0.75)]
        faults.sort(key=lambda f: f[0])
        try:
            while time.monotonic() - started < duration:
                while faults and time.monotonic() - started >= faults[0][0]:
                    faults.pop(0)[1]()
                self.supervise()
                time.sleep(0.5)
            self.stop_generating.set()
            generator.join(30)
            self.note(f"stopped generating after {self.generated} changes; draining")
            ok, report = self.drain(began)
        finally:
            for stage in self.stages.values():
                if stage.process is not None and stage.process.poll() is None:
                    os.killpg(stage.process.pid, signal.SIGTERM)
            for stage in self.stages.values():
                if stage.process is not None:
                    try:
                        stage.process.wait(90)
                    except subprocess.TimeoutExpired:
                        for pid in reversed(descendants(stage.process.pid)):
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
            for line in servers.stop(s):
                say(line)
        print("\n".join(report), flush=True)
        return 0 if ok else 1

    def plant_losses(self, each: int = 3) -> None:
        """Make the warehouse wrong on purpose, between two of the loader's loads: `each` orders removed,
        `each` changed and `each` rows MongoDB never had."""
        from warehouse.connection import connect
        from warehouse.schema import WarehouseSchema

        s = self.settings
        table = s.collection("orders").table
        deadline = time.monotonic() + 300
        while self._warehouse_rows(table) <= 2 * each:  # the first loads come after Spark's start
            if time.monotonic() > deadline:
                self.note("could not plant losses: the warehouse has loaded no orders yet")
                return
            time.sleep(2)
        client = connect_mongo(s)
        try:
            at = client[s.mongo_db].command("ping")["operationTime"]
        finally:
            client.close()
        con = connect(s.warehouse_path, schema=WarehouseSchema.of(s), wait=120)
        try:
            rows = con.execute(f"SELECT doc_id, document, cluster_time_s, cluster_time_inc FROM {table} "
                               f"ORDER BY random() LIMIT {2 * each}").fetchall()
            removed, changed = rows[:each], rows[each:]
            con.executemany(f"DELETE FROM {table} WHERE doc_id = ?", [[d] for d, *_ in removed])
            for doc_id, document, *_ in changed:
                tampered = {**json.loads(document), "planted": self.rng.randrange(1 << 30)}
                con.execute(f"UPDATE {table} SET document = ? WHERE doc_id = ?", [json.dumps(tampered), doc_id])
            extra = [json.dumps(f"planted-{len(self.planted)}-{n}") for n in range(each)]
            for doc_id in extra:
                con.execute(f"INSERT INTO {table} SELECT * REPLACE (? AS doc_id) FROM {table} LIMIT 1", [doc_id])
        finally:
            con.close()
        # A planted row is set right by any change newer than the version it held, loaded after the planting.
        self.planted.update({f"orders/{d}": ("removed", (t, i)) for d, _, t, i in removed})
        self.planted.update({f"orders/{d}": ("changed", (t, i)) for d, _, t, i in changed})
        self.planted.update({f"orders/{d}": ("extra", (at.time, at.inc)) for d in extra})
        self.note(f"planted {len(removed)} removed, {len(changed)} changed and {len(extra)} extra orders in the "
                  "warehouse")

    def _warehouse_rows(self, table: str) -> int:
        from warehouse.connection import connect
        from warehouse.errors import WarehouseError

        try:
            con = connect(self.settings.warehouse_path, read_only=True)
        except WarehouseError:
            return 0
        try:
            return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        except Exception:  # noqa: BLE001 - no table yet
            return 0
        finally:
            con.close()

    def rounds(self) -> tuple[list[tuple[int, bool, str]], set[str]]:
        """The loader's periodic reconciles: (differences, deferred, line) per round, and every document
        a round repaired ("collection/doc_id")."""
        log = (self.logs / "loader.log").read_text(errors="replace") if (self.logs / "loader.log").exists() else ""
        found, repaired = [], set()
        for line in log.splitlines():
            text = line.split(" INFO ", 1)[-1].split(": ", 1)[-1] if " INFO " in line else line
            match = ROUND.match(text.strip())
            if match:
                found.append((sum(int(g) for g in match.groups()[:3]), "deferred" in match.group(4), text.strip()))
            if REPAIRED in line:
                named, _ = json.JSONDecoder().raw_decode(line.split(REPAIRED, 1)[1])
                for collection, ids in named.items():
                    repaired |= {f"{collection}/{k}" for k in ids}
        return found, repaired

    def restart_mongo(self) -> None:
        say(servers.stop_mongo(self.settings))
        say(servers.start_mongo(self.settings))
        self.note("MongoDB restarted gracefully")

    def losses_found(self) -> tuple[int, int]:
        s = self.settings
        producer_log = self.logs / "producer.log"
        by_producer = producer_log.read_text(errors="replace").count(LOSS_LINE) if producer_log.exists() else 0
        by_stream = sum(1 for _ in s.data_loss_log.open()) if s.data_loss_log.exists() else 0
        return by_producer, by_stream

    def mark_losses(self, fault: str) -> None:
        self.loss_marks.append((fault, *self.losses_found()))

    def recreate_orders_topic(self) -> None:
        """The producer is paused (SIGSTOP) while the topic's records are read and the topic is deleted and
        created again, so what the deletion destroyed is known exactly: the history of those changes is
        gone unless the lake had read them (the current state is repaired by the producer's re-snapshot)."""
        from lakehouse.adapters.kafka import recreate_topics

        self.mark_losses("orders topic re-created")
        producer = self.stages["producer"].process
        assert producer is not None
        topic = self.settings.topic_for("orders")
        os.killpg(producer.pid, signal.SIGSTOP)
        try:
            time.sleep(1)  # a request already on its way lands in the topic before it is read
            held = [m for m in read_topic(self.settings, topic) if m["op"] != "snapshot_end"]
            self.destroyed |= {m["change_id"] for m in held}
            # Changes after the newest one Kafka held were in the producer's hands, unpublished; so were
            # those after its saved token that no other topic held (a batch spans topics, and a partition's
            # records may land before another's).
            self.deleted_at = max(((m["cluster_time_s"], m["cluster_time_inc"]) for m in held), default=(0, 0))
            saved = json.loads(self.settings.producer_checkpoint.read_text()).get("position") or {}
            self.saved_at = (int(saved.get("cluster_time_s", 0)), int(saved.get("cluster_time_inc", 0)))
            self.held_elsewhere = {m["change_id"] for other in self.settings.topics if other != topic
                                   for m in read_topic(self.settings, other)}
            recreate_topics(self.settings, [topic])
        finally:
            os.killpg(producer.pid, signal.SIGCONT)
        self.note("the orders topic deleted and re-created under the running pipeline")

    def restart_kafka(self) -> None:
        self.mark_losses("graceful Kafka restart")
        say(servers.stop_kafka(self.settings))
        say(servers.start_kafka(self.settings))
        self.note("Kafka restarted gracefully")

    def kill_kafka(self) -> None:
        self.mark_losses("Kafka SIGKILL")
        say(servers.kill_kafka(self.settings))
        say(servers.start_kafka(self.settings))
        self.note("Kafka SIGKILLed and started again")

    def pause_kafka(self, seconds: float) -> None:
        """SIGSTOP the broker for longer than every client's timeout (30 s), then SIGCONT: no stage may end
        on it (each waits and retries); an exit meanwhile or in the minute after counts as wrong."""
        pid = int((kafka_broker.node_dir(self.settings, 1) / "kafka.pid").read_text())
        exits = sum(stage.exits for stage in self.stages.values())
        os.kill(pid, signal.SIGSTOP)
        try:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                self.supervise()
                time.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        until = time.monotonic() + 60
        while time.monotonic() < until:
            self.supervise()
            time.sleep(0.5)
        self.pause_exits = sum(stage.exits for stage in self.stages.values()) - exits
        self.note(f"Kafka paused (SIGSTOP) for {seconds:.0f} s: {self.pause_exits} stage exit(s) then or in the "
                  "minute after (must be 0)")

    def drain(self, began: object, timeout: float = 900) -> tuple[bool, list[str]]:
        from lakehouse.app.reconcile import combined, lines, reconcile_each
        from lakehouse.contracts.types import ident
        from warehouse.connection import connect
        from warehouse.errors import WarehouseError

        s = self.settings
        drain_started = time.monotonic()
        result, results = None, []
        while time.monotonic() - drain_started < timeout:
            self.supervise()
            with contextlib.suppress(WarehouseError, PyMongoError):
                results = reconcile_each(s)  # every captured collection
                result = combined(results)
                if result.ok:
                    break
            time.sleep(5)
        drained_in = time.monotonic() - drain_started
        witnessed = witness_changes(s, began)
        witness = set(witnessed)
        con = connect(s.warehouse_path, read_only=True)
        try:
            facts = [r[0] for name in s.collections for r in con.execute(
                f"SELECT change_id FROM {ident(s.collection(name).changes)}").fetchall()]
            # The producer's re-snapshot after the topic's loss: its copies carry its opening cluster time.
            resnapshot = con.execute(
                f"SELECT cluster_time_s, cluster_time_inc FROM {ident(s.collection('orders').changes)} "
                "WHERE op = 'snapshot' AND (cluster_time_s > ? OR (cluster_time_s = ? AND cluster_time_inc >= ?)) "
                "ORDER BY cluster_time_s, cluster_time_inc LIMIT 1",
                [self.deleted_at[0], self.deleted_at[0], self.deleted_at[1]] if self.deleted_at else
                [1 << 62, 1 << 62, 0]).fetchone()
        finally:
            con.close()
        # Lost from the history on purpose: a change whose only copy was in the deleted topic and not yet
        # read into the lake, and a change after the newest one the topic held, up to the re-snapshot that
        # repaired the loss (the producer held it unpublished; its document's state is in the snapshot). Every other
        # witnessed change must be in the facts.
        skipped = set()
        if self.deleted_at is not None and resnapshot is not None:
            window = self.deleted_at, tuple(resnapshot)
            skipped = {c for c, at in witnessed.items() if window[0] <= at <= window[1]}
            if self.saved_at is not None and self.saved_at < self.deleted_at:
                skipped |= {c for c, at in witnessed.items()
                            if self.saved_at < at < self.deleted_at and c not in self.held_elsewhere}
        unread_destroyed = witness & (self.destroyed | skipped) - set(facts)
        missing_changes = witness - set(facts) - unread_destroyed
        by_producer, by_stream = self.losses_found()
        per_fault = {}
        for n, (fault, producer_before, stream_before) in enumerate(self.loss_marks):
            after = self.loss_marks[n + 1][1:] if n + 1 < len(self.loss_marks) else (by_producer, by_stream)
            per_fault[fault] = (after[0] - producer_before, after[1] - stream_before)
        broker_losses = sum(sum(found) for fault, found in per_fault.items() if fault != "orders topic re-created")
        recreated = per_fault.get("orders topic re-created")
        loader_log = (self.logs / "loader.log").read_text(errors="replace")
        repaired = sum(int(part.split()[0]) for part in loader_log.split("repair: published ")[1:])
        rounds, repaired_docs = self.rounds()
        decided = [r for r in rounds if not r[1]]
        wolf: list[str] = []  # what the periodic rounds got wrong
        if self.plant:
            healed = set()
            con = connect(s.warehouse_path, read_only=True)
            try:
                for key, (how, at) in self.planted.items():
                    doc_id = key.split("/", 1)[1]
                    if how != "extra" and con.execute(
                            f"SELECT count(*) FROM {ident(s.collection('orders').changes)} WHERE doc_id = ? AND "
                            "op <> 'snapshot' AND (cluster_time_s, cluster_time_inc) > (?, ?)",
                            [doc_id, at[0], at[1]]).fetchone()[0]:
                        healed.add(key)
            finally:
                con.close()
            stray = repaired_docs - set(self.planted)
            missed = set(self.planted) - repaired_docs - healed
            if stray:
                wolf.append(f"repaired {len(stray)} documents that were not planted, e.g. {sorted(stray)[:3]}")
            wolf += [f"{len(missed)} planted documents neither repaired nor set right by a later change, e.g. "
                     f"{sorted(missed)[:3]}"] if missed else []
        elif self.faults != "all":
            wolf += [f"{len(repaired_docs)} documents repaired with nothing lost"] if repaired_docs else []
            wolf += [f"{len(r)} rounds reported differences with nothing lost, e.g. {r[0][2]}"
                     for r in [[r for r in decided if r[0]]] if r]
        if self.faults != "all" or self.plant:
            wolf += ["no periodic reconcile decided anything (all deferred or none ran)"] if not decided else []
        slow = {n: max(st.recoveries, default=0) for n, st in self.stages.items()
                if max(st.recoveries, default=0) > RECOVERY_LIMIT_S[n]}
        ok = bool(result and result.ok) and not missing_changes and len(facts) == len(set(facts)) and not slow \
            and broker_losses == 0 and (recreated is None or sum(recreated) > 0) and not wolf and not self.pause_exits
        report = ["", "chaos summary", f"  changes generated {self.generated}, witnessed {len(witness)} "
                  f"({len(witness) / (self.minutes * 60):.0f} changes/s in MongoDB over the run)"]
        for name, st in self.stages.items():
            times = ", ".join(f"{t:.1f}s" for t in st.recoveries)
            report.append(f"  {name:9} killed {st.kills}x, exited by itself {st.exits}x, back after: {times or '-'} "
                          f"(limit {RECOVERY_LIMIT_S[name]:.0f}s)")
        report += [
            f"  faults: {'; '.join(e for e in self.events if not e.startswith('SIGKILL '))}",
            f"  Kafka data loss found by the producer {by_producer}x, by the streaming source {by_stream}x; "
            f"documents repaired by reconcile {repaired}",
            *(f"    after the {fault}: {found[0]}x by the producer, {found[1]}x by the streaming source"
              f"{' (must be > 0: the loss was made on purpose)' if 'topic' in fault else ' (must be 0)'}"
              for fault, found in per_fault.items()),
            f"  drained in {drained_in:.0f}s; facts {len(facts)}, duplicate change_ids {len(facts) - len(set(facts))}, "
            f"witnessed changes missing from the facts {len(missing_changes)} (besides {len(unread_destroyed)} whose "
            f"only copy was in the deleted topic, unread, or made before its re-snapshot: their documents' state is "
            f"repaired, that history is gone)",
            f"  periodic reconciles: {len(rounds)} rounds, {len(rounds) - len(decided)} deferred, "
            f"{sum(1 for r in decided if r[0])} with differences; documents repaired {len(repaired_docs)}"
            + (f", planted {len(self.planted)}" if self.plant else ""),
            *(f"  WRONG: {w}" for w in wolf),
            *(f"  {line}" for line in (lines(results) if result else ["reconcile never ran"])),
            f"  {'PASSED' if ok else 'FAILED'}; logs in {self.logs}",
        ]
        return ok, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=150.0,
                        help="generator steps per second (a step is one change, or an order placed with its products' "
                             "stock updates: about 1.8 changes in MongoDB per step; the summary prints those)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, lake, warehouse)")
    parser.add_argument("--faults", choices=FAULTS, default="all",
                        help="all (default); restarts: the streaming job SIGKILLed and Kafka restarted once each; "
                             "none. With restarts or none, no round may report a difference or repair anything")
    parser.add_argument("--plant", action="store_true",
                        help="plant losses in the warehouse three times: exactly those must be repaired")
    args = parser.parse_args()
    if args.plant and args.faults == "all":
        # The full-fault run re-creates a topic: its real losses are repaired too, and a round names at most
        # REPAIRS_NAMED documents, so "exactly the planted ones" cannot be checked there.
        parser.error("--plant needs --faults none or --faults restarts (the full-fault run loses documents on "
                     "purpose, and their repairs are not planted ones)")
    base = Path(tempfile.mkdtemp(prefix="chaos-", dir=Path("data").resolve() if Path("data").exists() else None))
    say(f"chaos run: {args.minutes:g} minutes at {args.rate:g} generator steps/s, seed {args.seed}, in {base}")
    code = Chaos(base, args.minutes, args.rate, args.seed, args.faults, args.plant).run()
    if not args.keep and code == 0:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
