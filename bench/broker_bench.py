"""The embedded Kafka broker's cost: CPU and resident memory while idle, then while the producer publishes
the changes a generator makes at a given rate (default 500 changes/s).

CPU is read from /proc (user + system time of the broker's JVM over the window, as a share of one core);
RSS is sampled every second (the highest is printed). The rate MongoDB really took is printed too: on two
cores shared with everything else it falls short of 500 changes/s (the embedded MongoDB is the limit), so
`--direct` instead publishes the first run's real events again, through the producer's own publisher
(acks=all, idempotent), at the rate asked, with no MongoDB in the way.

    make servers && .venv/bin/python bench/broker_bench.py --idle 30 --rate 500 --seconds 30 [--direct]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from infra import kafka_broker
from infra.processes import running
from lakehouse.adapters.kafka import delete_topics, end_offsets, publisher, read_values
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.procs import cpu_seconds, rss_mib  # noqa: E402


def measure(pids: list[int], seconds: float) -> tuple[float, float]:
    """(CPU as % of one core, summed over the brokers; highest RSS of one broker in MB) over `seconds`."""
    cpu0, t0, rss = sum(cpu_seconds(p) for p in pids), time.monotonic(), 0.0
    while time.monotonic() - t0 < seconds:
        rss = max(rss, *(rss_mib(p) for p in pids))
        time.sleep(1)
    return 100 * (sum(cpu_seconds(p) for p in pids) - cpu0) / (time.monotonic() - t0), rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=30, help="seconds measured with nothing running")
    parser.add_argument("--rate", type=float, default=500, help="changes per second asked of the generator")
    parser.add_argument("--seconds", type=float, default=30, help="seconds measured under load")
    parser.add_argument("--direct", action="store_true",
                        help="also publish recorded events at --rate without MongoDB (its rate is the limit here)")
    args = parser.parse_args()

    base = Settings.from_env()
    layout = kafka_broker.saved_layout(base)
    pids = [running(kafka_broker.node_dir(base, n) / "kafka.pid") for n in (layout.nodes if layout else ())]
    if not pids or None in pids:
        sys.exit(f"no embedded Kafka running in {kafka_broker.folder(base)}; start it with `make servers`")
    brokers = [p for p in pids if p]
    print(f"Apache Kafka {kafka_broker.version()}, {len(brokers)} broker(s), pids {brokers}", flush=True)

    cpu, rss = measure(brokers, args.idle)
    print(f"idle ({args.idle:.0f} s): CPU {cpu:.1f}% of one core, RSS {rss:.0f} MB", flush=True)

    name = f"bench_{int(time.time())}"
    with tempfile.TemporaryDirectory() as state:
        settings = base.replace(mongo_db=name, topic_prefix=name, state_dir=Path(state), producer_metrics_port=0)
        env = {**os.environ, **settings.to_env()}
        producer = subprocess.Popen([sys.executable, "-m", "lakehouse.app.cli", "produce"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = connect_mongo(settings)
        try:
            while not settings.producer_checkpoint.exists():
                time.sleep(0.2)
            generator = OrderGenerator.for_database(client[name], settings.collections, seed=1)
            stop, made = threading.Event(), [0]

            def generate() -> None:
                started = time.monotonic()
                while not stop.is_set():
                    generator.step()
                    made[0] += 1
                    ahead = started + made[0] / args.rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)

            published0 = sum(end_offsets(settings, settings.topics).values())
            worker = threading.Thread(target=generate, daemon=True)
            t0 = time.monotonic()
            worker.start()
            cpu, rss = measure(brokers, args.seconds)
            stop.set()
            worker.join()
            elapsed = time.monotonic() - t0
            published = sum(end_offsets(settings, settings.topics).values()) - published0
            print(f"under load ({args.seconds:.0f} s, asked {args.rate:.0f} changes/s, MongoDB took "
                  f"{made[0] / elapsed:.0f}/s, Kafka acknowledged {published / elapsed:.0f} events/s): CPU {cpu:.1f}% "
                  f"of one core, RSS {rss:.0f} MB", flush=True)
            if args.direct:
                ends = end_offsets(settings, settings.topics)
                events = [(t, v) for t in settings.topics for v in read_values(settings, {
                    k: o for k, o in ends.items() if k[0] == t})]
                direct(settings, brokers, events, args.rate, args.seconds)
        finally:
            producer.terminate()
            producer.wait(60)
            client.drop_database(name)
            client.close()
            delete_topics(settings, [*settings.topics, settings.dead_letter_topic])


def direct(settings: Settings, brokers: list[int], events: list[tuple[str, bytes]], rate: float,
           seconds: float) -> None:
    """The recorded events published again, in rounds of a tenth of a second, while the broker is measured."""
    import json

    if not events:
        print("no events recorded to publish again")
        return
    publisher_ = publisher(settings)
    stop, sent = threading.Event(), [0]

    def publish() -> None:
        started = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate) - sent[0]
            batch = [events[(sent[0] + i) % len(events)] for i in range(max(due, 0))]
            if batch:
                publisher_.send_all(batch, lambda e: (e[0], json.loads(e[1])["doc_id"].encode(), e[1]))
                sent[0] += len(batch)
            time.sleep(0.1)

    worker = threading.Thread(target=publish, daemon=True)
    t0 = time.monotonic()
    worker.start()
    cpu, rss = measure(brokers, seconds)
    stop.set()
    worker.join()
    publisher_.close()
    size = sum(len(v) for _, v in events) / len(events)
    print(f"publishing recorded events directly ({seconds:.0f} s, {sent[0] / (time.monotonic() - t0):.0f} events/s "
          f"acknowledged, {size:.0f} B each): CPU {cpu:.1f}% of one core, RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
