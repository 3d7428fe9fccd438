"""The streaming job in steady state: `run-all --follow` at --rate changes/s for --minutes, then Ctrl-C.

Issue 38's check, from outside, on the default servers (`make servers`) with its own database, topics,
lake, state and warehouse in a temporary folder:
- batch time of the lake query in the last 5 minutes against minutes 5-10 (within 20%);
- the streaming stage's RSS, its Python driver and Spark's JVM apart, sampled every --every seconds
  (flat: the last 5 minutes' mean against minutes 5-10);
- no traceback in any stage's log; Ctrl-C (SIGINT to run-all, as a terminal sends it) stops everything
  with exit 0, whatever batch is in hand.
It prints the figures, writes the samples as JSON lines and draws batch durations, rows per batch and RSS
over the run (the README's and the health notebook's picture):

    make servers && .venv/bin/python bench/steady_state.py --minutes 30 --rate 100 --png docs/img/steady-state.png
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import children, rss_mib  # noqa: E402
from lakehouse.adapters.kafka import delete_topics  # noqa: E402
from lakehouse.adapters.mongo import connect as connect_mongo  # noqa: E402
from lakehouse.contracts import batches  # noqa: E402
from lakehouse.core.config import Settings  # noqa: E402


def window(values: list[tuple[float, float]], start_min: float, end_min: float) -> list[float]:
    return [v for t, v in values if start_min * 60 <= t < end_min * 60]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=100.0, help="changes/s the generator makes")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--png", type=Path, default=None, help="draw the run here")
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder (default: a new temporary one)")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="steady-"))
    folder.mkdir(parents=True, exist_ok=True)
    name = f"steady{int(time.time())}"
    env = {**os.environ, "MONGO_DB": name, "TOPIC_PREFIX": name, "STATE_DIR": str(folder / "state"),
           "LAKE_PATH": str(folder / "lake"), "WAREHOUSE_PATH": str(folder / "warehouse.duckdb")}
    log = folder / "run-all.log"
    print(f"run-all --follow at {args.rate:g} changes/s for {args.minutes:g} minutes in {folder} ...", flush=True)
    with log.open("wb") as out:
        run_all = subprocess.Popen([sys.executable, "-m", "lakehouse.app.cli", "run-all", "--follow", "--rate",
                                    str(args.rate)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   process_group=0)
    started, started_at = time.monotonic(), time.time()
    pid_file = folder / "state" / "run" / "streaming.pid"
    samples: list[dict[str, float]] = []
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.every)
            if run_all.poll() is not None:
                raise SystemExit(f"run-all ended by itself (exit {run_all.returncode}); see {log}")
            if not pid_file.exists():
                continue
            driver = int(pid_file.read_text())
            jvm = sum(rss_mib(p) for p in children(driver))
            samples.append({"t": time.monotonic() - started, "driver_mib": rss_mib(driver), "jvm_mib": jvm})
            if len(samples) % max(1, int(300 / args.every)) == 0:
                print(f"  {samples[-1]['t'] / 60:.0f} min: driver {samples[-1]['driver_mib']:.0f} MiB, "
                      f"JVM {jvm:.0f} MiB", flush=True)
    finally:
        stop_asked = time.monotonic()
        os.killpg(run_all.pid, signal.SIGINT)  # Ctrl-C: to run-all's process group, as a terminal does
        try:
            code = run_all.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(run_all.pid, signal.SIGKILL)
            code = None
    stop_seconds = time.monotonic() - stop_asked
    settings = Settings.from_env(mongo_db=name, topic_prefix=name)
    delete_topics(settings, [*settings.topics, settings.dead_letter_topic])  # the broker re-reads what it holds
    client = connect_mongo(settings)
    client.drop_database(name)
    client.close()

    logs = [log, *sorted((folder / "state" / "logs").glob("*.log"))]
    tracebacks = {p.name: p.read_text(errors="replace").count("Traceback") for p in logs if p.exists()}
    records = [r for r in batches.read(folder / "state" / "spark" / "batches.jsonl") if r.at]
    timeline = [(datetime.fromisoformat(r.at).timestamp() - started_at, r) for r in records]  # since run-all began
    durations = [(t, r.duration_ms / 1000) for t, r in timeline if r.input_rows]
    early, late = window(durations, 5, 10), window(durations, args.minutes - 5, args.minutes)
    driver = [(s["t"], s["driver_mib"]) for s in samples]
    jvm = [(s["t"], s["jvm_mib"]) for s in samples]
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else float("nan")

    def change(a: list[float], b: list[float]) -> str:
        return f"{(mean(b) / mean(a) - 1) * 100:+.0f}%" if a and b and mean(a) else "n/a"

    generated = re.findall(r"generated ([\d,]+)", log.read_text(errors="replace"))
    made = int(generated[-1].replace(",", "")) if generated else 0
    print(f"changes made: {made:,} in {args.minutes:g} minutes = {made / (args.minutes * 60):.1f}/s "
          f"(asked {args.rate:g}/s: a saturated machine makes fewer)")
    print(f"lake batches: {len(durations)} with rows; mean batch time minutes 5-10 {mean(early):.2f} s, last 5 "
          f"minutes {mean(late):.2f} s: {change(early, late)} (target within 20%)")
    for label, series in (("driver", driver), ("JVM", jvm)):
        a, b = window(series, 5, 10), window(series, args.minutes - 5, args.minutes)
        print(f"{label} RSS: minutes 5-10 {mean(a):.0f} MiB, last 5 minutes {mean(b):.0f} MiB ({change(a, b)}), "
              f"peak {max((v for _, v in series), default=0):.0f} MiB")
    print(f"Ctrl-C: run-all exit {code} after {stop_seconds:.1f} s; tracebacks in logs: "
          f"{sum(tracebacks.values())} {tracebacks if sum(tracebacks.values()) else ''}")
    if args.png:
        draw(args.png, timeline, samples, args.rate)
        print(f"drawn: {args.png}")
    print(f"the run's folder (logs, batches, samples): {folder}")


def draw(target: Path, timeline: list[tuple[float, batches.BatchRecord]], samples: list[dict[str, float]],
         rate: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    minutes = [t / 60 for t, r in timeline if r.input_rows]
    top.plot(minutes, [r.duration_ms / 1000 for _, r in timeline if r.input_rows], ".", ms=3, color="tab:blue")
    top.set_ylabel("lake batch, s", color="tab:blue")
    top.set_ylim(bottom=0)
    rows = top.twinx()
    rows.plot(minutes, [r.input_rows for _, r in timeline if r.input_rows], ".", ms=2, color="tab:gray", alpha=0.5)
    rows.set_ylabel("rows per batch", color="tab:gray")
    rows.set_ylim(bottom=0)
    top.set_title(f"run-all --follow at {rate:g} changes/s: the lake query's batches and the streaming stage's memory")
    bottom.plot([s["t"] / 60 for s in samples], [s["driver_mib"] for s in samples], label="Python driver")
    bottom.plot([s["t"] / 60 for s in samples], [s["jvm_mib"] for s in samples], label="Spark JVM + Python workers")
    bottom.set_ylabel("RSS, MiB")
    bottom.set_xlabel("minutes")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="lower right")
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=90)


if __name__ == "__main__":
    main()
