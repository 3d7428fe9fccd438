"""Start, stop and check the pipeline's servers on this machine.

MongoDB (a replica set, because change streams need one) and Kafka are started only when their
configured address is on loopback; anything else is the user's own server and is left alone. The
embedded defaults are SecantusDB and Apache Kafka in KRaft mode (see README, "Why these servers"); each is addressed
only through MONGO_URI / KAFKA_BOOTSTRAP_SERVERS, so real ones drop in unchanged. Every start waits
for readiness with a deadline; every stop stops only what its PID file says this project started.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from infra import kafka_broker
from infra.processes import (
    LOOPBACK,
    ROOT,
    StackError,
    bin_path,
    port_open,
    raise_if_exited,
    running,
    spawn,
    stop_pid_file,
    use_existing,
    wait,
)
from lakehouse.core.config import Settings
from lakehouse.core.errors import redact
from lakehouse.core.metrics import SERVICES

__all__ = ["LOOPBACK", "ROOT", "StackError"]


def _mongo_ready(settings: Settings) -> bool:
    from lakehouse.adapters.mongo import is_ready_primary

    return is_ready_primary(settings)


# -- MongoDB -------------------------------------------------------------------------------------
def mongo_dir(settings: Settings) -> Path:
    return settings.stack_dir / "mongodb"


def start_mongo(settings: Settings, extra_args: tuple[str, ...] = ()) -> str:
    """extra_args go to the embedded server, e.g. ("--oplog-max-entries", "200") for a tiny history."""
    host, port = settings.mongo_address
    folder = mongo_dir(settings)
    log, pid_file = folder / "mongod.log", folder / "mongod.pid"
    existing = use_existing("MongoDB", settings.mongo_uri, host, port, lambda: _mongo_ready(settings), log)
    if existing:
        return existing
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        bin_path("secantusd-py"), "--host", host, "--port", str(port),
        "--storage-path", str(folder / "data"),
        "--oplog-retention-seconds", str(settings.mongo_oplog_retention_seconds),
        "--oplog-max-entries", str(settings.mongo_oplog_max_entries),
        *extra_args,  # after the settings: the server takes the last of a repeated option
    ]
    pid = spawn(command, log, pid_file)
    wait(f"MongoDB on {host}:{port}", lambda: _mongo_ready(settings), log, pid=pid)
    return f"MongoDB: started replica set on {host}:{port} (pid {pid}, log {log})"


def stop_mongo(settings: Settings) -> str:
    return stop_pid_file("MongoDB", mongo_dir(settings) / "mongod.pid")


def tool(name: str) -> str:
    """A monitoring binary: the one infra/setup.sh unpacked into .tools/ (Debian's prometheus), else PATH."""
    local = ROOT / ".tools" / "prometheus" / "usr" / "bin" / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise StackError(f"{name} is not installed; run `make setup` (it unpacks Debian's prometheus into .tools/) "
                         "or put Prometheus on PATH")
    return found


# -- Kafka ---------------------------------------------------------------------------------------
def start_kafka(settings: Settings, brokers: int | None = None) -> str:
    """The embedded Apache Kafka (infra/kafka_broker.py): every broker of its saved layout."""
    return "\n".join(kafka_broker.start(settings, brokers))


def stop_kafka(settings: Settings) -> str:
    return "\n".join(kafka_broker.stop(settings))


def kill_kafka(settings: Settings, broker: int = 1) -> str:
    """SIGKILL an embedded broker, as a crash would (fault tests and `make chaos`); start_kafka restarts it."""
    return kafka_broker.kill_node(settings, broker)


# -- Spark standalone cluster --------------------------------------------------------------------
SPARK_WORKERS = 2
DEFAULT_SPARK_MASTER = "spark://127.0.0.1:7077"


def _spark_dir(settings: Settings) -> Path:
    return settings.stack_dir / "spark"


def spark_home() -> Path:
    """pip's pyspark ships bin/spark-class and the jars: enough for a standalone cluster (no download)."""
    found = importlib.util.find_spec("pyspark")
    if found is None or not found.submodule_search_locations:
        raise StackError("pyspark is not installed; run `make setup` first")
    return Path(next(iter(found.submodule_search_locations)))


def cluster_master(settings: Settings) -> tuple[str, int]:
    """The master's address: SPARK_MASTER's when it is a spark:// URL on loopback, else 127.0.0.1:7077."""
    url = settings.spark_master if settings.spark_master.startswith("spark://") else DEFAULT_SPARK_MASTER
    host, _, port = url.removeprefix("spark://").partition(":")
    return host, int(port or 7077)


def _master_state(webui: int) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{webui}/json/", timeout=2) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def start_spark_cluster(settings: Settings, workers: int = SPARK_WORKERS, webui_port: int = 8080,
                        worker_cores: int = 1, worker_memory: str = "2g") -> list[str]:
    """A standalone master and `workers` workers on loopback, from the installed pyspark; ready when every
    worker has registered. Executors run in the workers' own JVMs and Python workers."""
    host, port = cluster_master(settings)
    if host not in LOOPBACK:
        return [f"Spark: external master at spark://{host}:{port}, not started here"]
    folder = _spark_dir(settings)
    master_pid = folder / "master.pid"
    if running(master_pid):
        webui = json.loads((folder / "master.json").read_text())["webui_port"]
        return [f"Spark: master already running at spark://{host}:{port} (web UI http://{host}:{webui})"]
    if port_open(host, port):
        raise StackError(f"{host}:{port} is in use by something else; set SPARK_MASTER=spark://{host}:<free port>")
    home = spark_home()
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": host, "PYSPARK_PYTHON": sys.executable,
           "SPARK_NO_DAEMONIZE": "1"}
    spark_class = str(home / "bin" / "spark-class")
    master = f"spark://{host}:{port}"
    (folder / "master.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "master.json").write_text(json.dumps({"host": host, "port": port, "webui_port": webui_port}))
    log = folder / "master.log"
    pid = spawn([spark_class, "org.apache.spark.deploy.master.Master", "--host", host, "--port", str(port),
                  "--webui-port", str(webui_port)], log, master_pid, env)
    wait(f"Spark master on {host}:{port}", lambda: _master_state(webui_port)["status"] == "ALIVE", log, 120, pid)
    lines = [f"Spark: master at spark://{host}:{port} (pid {pid}, web UI http://{host}:{webui_port}, log {log})"]
    started = {n: _start_worker(settings, n, spark_class, master, env, worker_cores, worker_memory)
               for n in range(1, workers + 1)}
    lines += [line for line, _ in started.values()]

    def registered() -> bool:
        for n, (_, worker) in started.items():
            raise_if_exited(f"Spark worker {n}", worker, folder / f"worker-{n}.log")
        return _master_state(webui_port)["aliveworkers"] >= workers

    wait(f"{workers} Spark workers registered with spark://{host}:{port}", registered, folder / "worker-1.log", 120)
    return lines


def _start_worker(settings: Settings, n: int, spark_class: str, master: str, env: dict[str, str], cores: int,
                  memory: str) -> tuple[str, int]:
    folder = _spark_dir(settings)
    log = folder / f"worker-{n}.log"
    work = folder / f"work-{n}"
    work.mkdir(parents=True, exist_ok=True)
    pid = spawn([spark_class, "org.apache.spark.deploy.worker.Worker", "--host", env["SPARK_LOCAL_IP"],
                  "--webui-port", "0", "--cores", str(cores), "--memory", memory, "--work-dir", str(work), master],
                 log, folder / f"worker-{n}.pid", env)
    return f"Spark: worker {n} ({cores} core, {memory}; pid {pid}, log {log})", pid


def cluster_workers_alive(settings: Settings) -> int:
    webui = json.loads((_spark_dir(settings) / "master.json").read_text())["webui_port"]
    return int(_master_state(webui)["aliveworkers"])


def kill_spark_worker(settings: Settings, n: int) -> str:
    """SIGKILL worker `n` and everything it started (its executors, their Python workers), as a lost node."""
    pid = running(_spark_dir(settings) / f"worker-{n}.pid")
    if pid is None:
        raise StackError(f"Spark worker {n} is not running")
    os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # started by this process: reap it, so it is not taken for alive
    return f"Spark: worker {n} killed (pid {pid})"


def stop_spark_cluster(settings: Settings) -> list[str]:
    folder = _spark_dir(settings)
    lines = [stop_pid_file(f"Spark worker {p.stem.split('-')[1]}", p) for p in sorted(folder.glob("worker-*.pid"))]
    return [*lines, stop_pid_file("Spark master", folder / "master.pid")] if (folder / "master.pid").exists() \
        else lines or ["Spark: no cluster started by this project"]


# -- Prometheus ----------------------------------------------------------------------------------
PROMETHEUS_JOBS = {service: f"lakehouse-{service}" for service in SERVICES}  # service -> its scrape job
ALERT_RULES = ROOT / "infra" / "prometheus" / "alerts.yml"


def _prometheus_dir(settings: Settings) -> Path:
    return settings.stack_dir / "prometheus"


def prometheus_config(settings: Settings, scrape_interval: str = "5s") -> str:
    """The scrape config for the services on this machine (the same jobs as infra/prometheus/prometheus.yml)."""
    jobs = [{"job_name": job, "static_configs": [{"targets": [f"{settings.metrics_host}:{settings.metrics_port(s)}"]}]}
            for s, job in PROMETHEUS_JOBS.items() if settings.metrics_port(s)]
    config = {"global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                         "evaluation_interval": scrape_interval},
              "rule_files": [str(ALERT_RULES)], "scrape_configs": jobs}
    return json.dumps(config, indent=2)  # YAML is a superset of JSON


def start_prometheus(settings: Settings, scrape_interval: str = "5s") -> str:
    host, port = "127.0.0.1", settings.prometheus_port
    folder = _prometheus_dir(settings)
    log, pid_file, config = folder / "prometheus.log", folder / "prometheus.pid", folder / "prometheus.yml"
    if running(pid_file):
        return f"Prometheus: already running at http://{host}:{port} (log {log})"
    if port_open(host, port):
        raise StackError(f"{host}:{port} is in use by something else; set PROMETHEUS_PORT to a free port")
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(prometheus_config(settings, scrape_interval))
    pid = spawn([tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
                  f"--web.listen-address={host}:{port}", "--storage.tsdb.retention.time=7d"], log, pid_file)
    wait(f"Prometheus on {host}:{port}", lambda: _http_ok(f"http://{host}:{port}/-/ready"), log, pid=pid)
    return f"Prometheus: http://{host}:{port} scraping {', '.join(PROMETHEUS_JOBS.values())} (pid {pid}, log {log})"


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
        return response.status == 200


def stop_prometheus(settings: Settings) -> str:
    return stop_pid_file("Prometheus", _prometheus_dir(settings) / "prometheus.pid")


def start(settings: Settings, spark_cluster: bool = False, prometheus: bool = False,
          kafka_brokers: int | None = None) -> list[str]:
    lines = [start_mongo(settings), *kafka_broker.start(settings, kafka_brokers)]
    if spark_cluster:
        lines += start_spark_cluster(settings)
    if prometheus:
        lines.append(start_prometheus(settings))
    return lines


def stop(settings: Settings) -> list[str]:
    """Everything this project started (servers, a Spark cluster, Prometheus)."""
    lines = []
    if (_prometheus_dir(settings) / "prometheus.pid").exists():
        lines.append(stop_prometheus(settings))
    if any(_spark_dir(settings).glob("*.pid")):
        lines += stop_spark_cluster(settings)
    return [*lines, *kafka_broker.stop(settings), stop_mongo(settings)]


def status(settings: Settings) -> list[str]:
    lines = []
    try:
        up = _mongo_ready(settings)
    except Exception:  # noqa: BLE001 - one that does not answer is down
        up = False
    lines.append(f"MongoDB: {'up' if up else 'DOWN'} at {redact(settings.mongo_uri)}")
    lines.append(kafka_broker.status(settings))
    if (_spark_dir(settings) / "master.pid").exists():
        host, port = cluster_master(settings)
        try:
            alive = f"up at spark://{host}:{port}, {cluster_workers_alive(settings)} workers alive"
        except Exception:  # noqa: BLE001 - a master that does not answer is down
            alive = f"DOWN at spark://{host}:{port}"
        lines.append(f"Spark cluster: {alive}")
    if (_prometheus_dir(settings) / "prometheus.pid").exists():
        url = f"http://127.0.0.1:{settings.prometheus_port}"
        try:
            up = _http_ok(f"{url}/-/ready")
        except Exception:  # noqa: BLE001
            up = False
        lines.append(f"Prometheus: {'up' if up else 'DOWN'} at {url}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--spark-cluster", action="store_true",
                        help="Also a Spark standalone master and two workers (SPARK_MASTER=spark://127.0.0.1:7077).")
    parser.add_argument("--kafka-brokers", type=int, choices=[1, kafka_broker.CLUSTER_BROKERS], default=None,
                        help="Brokers of a new embedded Kafka: 1 (the default) or a replicated cluster of 3 "
                             "(replication 3, min.insync.replicas 2). An existing one keeps its own.")
    parser.add_argument("--prometheus", action="store_true",
                        help="Also Prometheus, scraping the pipeline's metrics ports (PROMETHEUS_PORT).")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    try:
        action = {"start": lambda s: start(s, args.spark_cluster, args.prometheus, args.kafka_brokers), "stop": stop,
                  "status": status}[args.action]
        for line in action(settings):
            print(line, flush=True)
    except StackError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
