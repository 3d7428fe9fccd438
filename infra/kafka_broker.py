"""The embedded Apache Kafka: one KRaft broker by default, or a replicated three-broker cluster.

The jars come from Maven Central through infra/jars/kafka/pom.xml (`make setup` copies them into
.tools/jars/kafka/); nothing is downloaded here. Each node is a combined broker and controller, so a
cluster needs no separate controller processes: three nodes form the controller quorum and replicate
every topic three times with min.insync.replicas=2. What was planned (cluster id, node ids, ports) is
written once to .stack/kafka/cluster.json and every start reads it back, so a node always comes back
with the same identity, ports and storage, which is formatted only the first time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.processes import (
    ROOT,
    StackError,
    alive,
    exit_code,
    port_open,
    running,
    spawn,
    stop_pid_file,
    terminate,
    this_run,
    use_existing,
    wait,
)
from lakehouse.core.config import Settings
from lakehouse.core.errors import redact

JARS = ROOT / ".tools" / "jars" / "kafka"
LOG4J_CONFIG = ROOT / "infra" / "kafka" / "log4j2.properties"
READY_TIMEOUT_S = 120.0  # a JVM on a busy 2-core machine; a node after a crash also recovers its logs
STOP_GRACE_S = 60.0  # a controlled shutdown moves leadership away first
# 2 cores: few threads per node, a heap that fits three nodes beside Spark with room to spare.
JVM_OPTIONS = ("-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:ParallelGCThreads=2",
               "-XX:ConcGCThreads=1", "-XX:CICompilerCount=2", "-XX:+ExitOnOutOfMemoryError",
               "-Djava.awt.headless=true")
CLUSTER_BROKERS = 3


@dataclass(frozen=True)
class Node:
    id: int
    host: str
    port: int
    controller_port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Layout:
    cluster_id: str
    nodes: tuple[Node, ...]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    @property
    def replication(self) -> int:
        return min(len(self.nodes), 3)

    @property
    def min_insync(self) -> int:
        return 2 if self.replication >= 3 else 1


def folder(settings: Settings) -> Path:
    return settings.stack_dir / "kafka"


def node_dir(settings: Settings, node: Node | int) -> Path:
    return folder(settings) / f"broker-{node if isinstance(node, int) else node.id}"


def _layout_file(settings: Settings) -> Path:
    return folder(settings) / "cluster.json"


def saved_layout(settings: Settings) -> Layout | None:
    path = _layout_file(settings)
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return Layout(raw["cluster_id"], tuple(Node(**n) for n in raw["nodes"]))


def _cluster_id() -> str:
    """Kafka's Uuid text: 16 random bytes, URL-safe base64 without padding, never starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _free_port(host: str, wanted: int, taken: set[int]) -> int:
    """`wanted` when nothing listens there, else a port the system gives."""
    if wanted not in taken and 0 < wanted < 65536 and not port_open(host, wanted):
        return wanted
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def plan(settings: Settings, brokers: int) -> Layout:
    """Where `brokers` new nodes listen. The client ports are KAFKA_BOOTSTRAP_SERVERS's when it names one
    address per node, else the first one's port and the ones after it; each controller listens beside."""
    addresses = [a.strip() for a in settings.kafka_bootstrap_servers.split(",") if a.strip()]
    host = addresses[0].rpartition(":")[0] or "127.0.0.1"
    first = int(addresses[0].rpartition(":")[2] or 9092)
    ports = [int(a.rpartition(":")[2]) for a in addresses] if len(addresses) == brokers else \
        [first + 2 * n for n in range(brokers)]
    taken: set[int] = set(ports)
    nodes = []
    for n, port in enumerate(ports, start=1):
        controller = _free_port(host, port + 1, taken)
        taken.add(controller)
        nodes.append(Node(n, host, port, controller))
    return Layout(_cluster_id(), tuple(nodes))


def properties(settings: Settings, layout: Layout, node: Node) -> str:
    voters = ",".join(f"{n.id}@{n.host}:{n.controller_port}" for n in layout.nodes)
    replication, min_insync = layout.replication, layout.min_insync
    lines = {
        "process.roles": "broker,controller",
        "node.id": node.id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{node.host}:{node.port},CONTROLLER://{node.host}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{node.host}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": node_dir(settings, node) / "data",
        # What topics get when their creator leaves it to the broker (the pipeline does: KAFKA_REPLICATION_FACTOR 0).
        "num.partitions": settings.kafka_partitions,
        "default.replication.factor": replication,
        "min.insync.replicas": min_insync,
        "unclean.leader.election.enable": "false",
        "offsets.topic.replication.factor": replication,
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": min_insync,
        "share.coordinator.state.topic.replication.factor": replication,
        "share.coordinator.state.topic.min.isr": min_insync,
        # Two cores: a few threads each.
        "num.network.threads": 2,
        "num.io.threads": 2,
        "num.replica.fetchers": 1,
        "background.threads": 2,
        "num.recovery.threads.per.data.dir": 1,
        "log.cleaner.threads": 1,
        "group.initial.rebalance.delay.ms": 0,
        "log.retention.hours": 168,
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def _java(main_class: str, *args: str, log_dir: Path) -> list[str]:
    if not any(JARS.glob("kafka_2.13-*.jar")):
        raise StackError(f"Apache Kafka's jars are not in {JARS}; run `make setup` (it fetches them with Maven)")
    return ["java", *JVM_OPTIONS, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", f"-Dkafka.logs.dir={log_dir}",
            "-cp", f"{JARS}/*", main_class, *args]


def version() -> str:
    found = sorted(JARS.glob("kafka_2.13-*.jar"))
    return found[-1].stem.removeprefix("kafka_2.13-") if found else "not installed"


def _prepare(settings: Settings, layout: Layout, node: Node) -> Path:
    """The node's properties, and its storage formatted the first time (never again: that would
    erase it)."""
    home = node_dir(settings, node)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "server.properties"
    config.write_text(properties(settings, layout, node))
    if not (home / "data" / "meta.properties").exists():
        result = subprocess.run(_java("kafka.tools.StorageTool", "format", "--cluster-id", layout.cluster_id,
                                      "--config", str(config), "--ignore-formatted", log_dir=home),
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka broker {node.id}'s storage in {home / 'data'} failed:\n"
                             f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return config


def _pid_file(settings: Settings, node: Node | int) -> Path:
    return node_dir(settings, node) / "kafka.pid"


def answers(node: Node) -> bool:
    from lakehouse.adapters.kafka import broker_answers

    return broker_answers(node.address)


def start(settings: Settings, brokers: int | None = None) -> list[str]:
    """Every node of the saved layout (or of a new one with `brokers` nodes, 1 unless asked), each
    ready when it answers on its own address; the whole when every node is in the cluster's metadata."""
    host, port = settings.kafka_address
    layout = saved_layout(settings)
    if layout is None:
        from lakehouse.adapters.kafka import is_ready

        existing = use_existing("Kafka", settings.kafka_bootstrap_servers, host, port, lambda: is_ready(settings),
                                folder(settings))
        if existing:  # the user's own Kafka (elsewhere, or already answering on loopback): used as it is
            return [existing]
        layout = plan(settings, brokers or 1)
        folder(settings).mkdir(parents=True, exist_ok=True)
        _layout_file(settings).write_text(json.dumps({"cluster_id": layout.cluster_id,
                                                      "nodes": [asdict(n) for n in layout.nodes]}, indent=2))
    elif brokers is not None and brokers != len(layout.nodes):
        raise StackError(f"{folder(settings)} holds a {len(layout.nodes)}-broker Kafka; `make stop`, then remove "
                         f"that folder (its topics go with it) or set STACK_DIR elsewhere, to start {brokers}")
    lines = _start_nodes(settings, layout, layout.nodes)
    if len(layout.nodes) > 1:
        from lakehouse.adapters.kafka import broker_ids

        wait(f"all {len(layout.nodes)} Kafka brokers in the cluster",
             lambda: len(broker_ids(layout.bootstrap)) == len(layout.nodes), node_dir(settings, 1) / "server.log",
             READY_TIMEOUT_S)
        lines.append(f"Kafka: cluster of {len(layout.nodes)} (replication {layout.replication}, min.insync.replicas "
                     f"{layout.min_insync}); clients: KAFKA_BOOTSTRAP_SERVERS={layout.bootstrap}")
    return lines


def _node(settings: Settings, node_id: int) -> tuple[Layout, Node]:
    layout = saved_layout(settings)
    if layout is None:
        raise StackError(f"no embedded Kafka in {folder(settings)}; start one with `make servers`")
    for node in layout.nodes:
        if node.id == node_id:
            return layout, node
    raise StackError(f"the embedded Kafka has no broker {node_id} (it has {[n.id for n in layout.nodes]})")


def start_node(settings: Settings, node_id: int) -> str:
    """One node (a restart of a stopped or killed one), ready when it answers and is registered."""
    layout, node = _node(settings, node_id)
    return _start_nodes(settings, layout, (node,))[0]


def _start_nodes(settings: Settings, layout: Layout, nodes: tuple[Node, ...]) -> list[str]:
    """Launch every node first, then wait for each: a node of a cluster finishes starting only once a
    quorum of controllers is up."""
    launched = []
    for node in nodes:
        home = node_dir(settings, node)
        pid = running(_pid_file(settings, node))
        if pid is None:
            for listener in (node.port, node.controller_port):
                if port_open(node.host, listener):
                    raise StackError(f"{node.host}:{listener}, Kafka broker {node.id}'s, is in use by something "
                                     f"else; stop it (or remove {folder(settings)} to plan new ports)")
            config = _prepare(settings, layout, node)
            launched.append((node, spawn(_java("kafka.Kafka", str(config), log_dir=home), home / "stdout.log",
                                         _pid_file(settings, node)), True))
        else:
            launched.append((node, pid, False))
    lines = []
    for node, pid, new in launched:
        home = node_dir(settings, node)
        wait(f"Kafka broker {node.id} on {node.address}", lambda n=node, p=pid, h=home: answers(n) or _exited(p, h),
             home / "server.log", READY_TIMEOUT_S)
        lines.append(f"Kafka: broker {node.id} (Apache Kafka {version()}, KRaft) at {node.address} (pid {pid}, "
                     f"log {home / 'server.log'})" if new else
                     f"Kafka: broker {node.id} already running at {node.address} (pid {pid})")
    return lines


def _exited(pid: int, home: Path) -> bool:
    """A node that died while starting fails the wait at once, with its exit code and its own words
    (this run's launch output, and its server.log)."""
    code = exit_code(pid)
    if code is not None:
        log = (home / "server.log").read_text(errors="replace")[-3000:] if (home / "server.log").exists() else ""
        raise StackError(f"Kafka broker in {home} exited while starting (exit code {code}):\n"
                         f"{this_run(home / 'stdout.log', 40)}\n{log}")
    return False


def stop_node(settings: Settings, node_id: int) -> str:
    """A graceful stop (SIGTERM: a controlled shutdown that hands leadership over), SIGKILL after 60 s."""
    _, node = _node(settings, node_id)
    return stop_pid_file(f"Kafka broker {node.id}", _pid_file(settings, node), STOP_GRACE_S)


def kill_node(settings: Settings, node_id: int = 1) -> str:
    """SIGKILL a node, as a crash would (fault tests and `make chaos`); start_node brings it back."""
    _, node = _node(settings, node_id)
    pid = running(_pid_file(settings, node))
    if pid is None:
        raise StackError(f"Kafka broker {node.id} is not running")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    _pid_file(settings, node).unlink(missing_ok=True)
    return f"Kafka: broker {node.id} killed (pid {pid})"


def stop(settings: Settings) -> list[str]:
    """Every node at once: stopped one by one, the last ones would wait for a controller quorum that the
    first ones took away."""
    layout = saved_layout(settings)
    if layout is None:
        return ["Kafka: not started by this project"]
    pids = {node.id: running(_pid_file(settings, node)) for node in layout.nodes}
    for pid in pids.values():
        if pid:
            os.kill(pid, signal.SIGTERM)
    lines = []
    for node in layout.nodes:
        pid = pids[node.id]
        if pid:
            terminate(pid, STOP_GRACE_S)  # already asked: this waits, and kills at the deadline
            lines.append(f"Kafka: broker {node.id} stopped (pid {pid})")
        _pid_file(settings, node).unlink(missing_ok=True)
    return lines or ["Kafka: not running"]


def status(settings: Settings) -> str:
    layout = saved_layout(settings)
    if layout is None:
        from lakehouse.adapters.kafka import is_ready

        try:
            up = is_ready(settings)
        except Exception:  # noqa: BLE001 - one that does not answer is down
            up = False
        return f"Kafka: {'up' if up else 'DOWN'} at {redact(settings.kafka_bootstrap_servers)}"
    states = []
    for node in layout.nodes:
        try:
            up = answers(node)
        except Exception:  # noqa: BLE001
            up = False
        states.append(f"broker {node.id} {'up' if up else 'DOWN'} at {node.address}")
    kind = f"{len(layout.nodes)} brokers" if len(layout.nodes) > 1 else "1 broker"
    return f"Kafka (Apache Kafka {version()}, KRaft, {kind}): " + ", ".join(states)
