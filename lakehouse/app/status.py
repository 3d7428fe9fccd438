"""What each stage has done and how far behind it is, read from the stages' own records.

Producer: its resume-token file. Kafka: end offsets against the offsets the lake query has
committed in its Spark checkpoint (the source of truth; Kafka consumer groups are not used).
Spark: the per-batch metrics file. Warehouse: DuckDB, read-only. Freshness: the newest `updated_at`
in MongoDB against the newest change in DuckDB. A stage that cannot be read says why instead of
failing the whole report.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lakehouse.adapters import explain
from lakehouse.contracts import batches, tables
from lakehouse.contracts.positions import committed_offsets, partition_key
from lakehouse.core.config import Settings


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def producer_status(settings: Settings) -> dict[str, Any]:
    path = settings.producer_checkpoint
    if not path.exists():
        return {"state": f"no resume token yet at {path}"}
    stored = json.loads(path.read_text())
    position = stored.get("position") or {}
    lifecycle = settings.producer_lifecycle
    return {
        "state": "ok",
        "last_lifecycle_event": json.loads(lifecycle.read_text()) if lifecycle.exists() else None,
        "events_published": stored.get("events_published", 0),
        "last_change_time": _iso(position.get("cluster_time_s")),
        "token_saved_at": _iso(path.stat().st_mtime),
        "resume_token": (stored.get("resume_token") or {}).get("_data"),
    }


def kafka_status(settings: Settings) -> dict[str, Any]:
    from lakehouse.adapters.kafka import end_offsets

    every = end_offsets(settings, [*settings.topics, settings.dead_letter_topic])
    ends = {tp: end for tp, end in every.items() if tp[0] != settings.dead_letter_topic}
    committed = committed_offsets(settings.spark_checkpoint)
    partitions = [
        {"topic": topic, "partition": partition, "end_offset": end,
         "committed_offset": committed.get(partition_key(topic, partition), 0),
         "lag": end - committed.get(partition_key(topic, partition), 0)}
        for (topic, partition), end in sorted(ends.items())
    ]
    return {"state": "ok", "partitions": partitions, "total_lag": sum(p["lag"] for p in partitions),
            "data_loss": data_losses(settings), "loss_watch_unknown": _read_json(settings.loss_watch_unknown),
            "dead_letters": dead_letters(settings, {tp: e for tp, e in every.items() if tp not in ends})}


DEAD_LETTERS_READ = 10_000  # the newest dead letters read to count them by reason


def dead_letters(settings: Settings, ends: dict[tuple[str, int], int]) -> dict[str, Any]:
    """How many events the producer dead-lettered (`ends`: the dead-letter topic's end offsets), and (of
    each partition's newest DEAD_LETTERS_READ) why."""
    import re

    from lakehouse.adapters.kafka import read_values

    reasons: dict[str, int] = {}
    for value in read_values(settings, ends, newest=DEAD_LETTERS_READ):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            reason = re.sub(r"\d+", "N", str(json.loads(value).get("reason", "?")))[:120]
            reasons[reason] = reasons.get(reason, 0) + 1
    return {"topic": settings.dead_letter_topic, "total": sum(ends.values()), "by_reason": reasons}


def data_losses(settings: Settings) -> list[dict[str, Any]]:
    """Kafka records the streaming source found lost (each loss once, however often it was noticed)."""
    path = settings.data_loss_log
    if not path.exists():
        return []
    seen: dict[tuple, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            seen.setdefault((entry["topic"], entry["partition"], entry["from"], entry["to"]), entry)
    return list(seen.values())


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small state file a stage writes atomically; None when there is none (or it is being replaced)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def reconcile_status(settings: Settings) -> dict[str, Any]:
    path = settings.reconcile_state
    if not path.exists():
        return {"state": "no reconcile recorded yet (`lakehouse reconcile`, or the loader's --reconcile-every)"}
    return {"state": "ok", **json.loads(path.read_text())}


def batch_metrics(settings: Settings) -> list[dict[str, Any]]:
    """The lake query's batches in order (contracts/batches.py), as dicts for tables and notebooks."""
    return [asdict(record) for record in batches.read(settings.batch_metrics)]


def spark_status(settings: Settings) -> dict[str, Any]:
    records = batches.read(settings.batch_metrics)
    if not records:
        return {"state": f"no batches yet ({settings.batch_metrics})"}
    newest = records[-1]
    return {
        "state": "ok",
        "batches": len(records),
        **{k: v for k, v in batches.totals(records).items() if k != "already_in_lake"},
        "quality": batches.quality_totals(records),
        "watermark": next((r.watermark for r in reversed(records) if r.watermark), None),
        "last_batch_at": newest.at,
        "last_batch_ms": newest.duration_ms,
    }


def warehouse_status(settings: Settings) -> dict[str, Any]:
    from lakehouse.adapters.delta import version_of
    from warehouse.errors import WarehouseError
    from warehouse.summary import summary

    silver_version = version_of(settings.table_path(tables.SILVER))
    if not settings.warehouse_path.exists():
        return {"state": f"no warehouse yet at {settings.warehouse_path}", "silver_version": silver_version}
    try:
        held = summary(settings)
    except WarehouseError as exc:
        return {"state": f"unreadable now: {exc}", "silver_version": silver_version}
    version = held["loaded_version"]
    loaded_at = held["loaded_at"]
    return {
        "state": "ok",
        "loaded_version": version,
        "silver_version": silver_version,
        "versions_behind": None if silver_version is None else silver_version - (version if version is not None
                                                                                 else -1),
        "loaded_at": loaded_at.isoformat() if loaded_at is not None else None,
        "collections": {name: {k: v for k, v in c.items() if k != "loaded_at"}
                        for name, c in held["collections"].items()},
        "newest_change": _iso(held["newest_cluster_time_s"]),
    }


def mongo_status(settings: Settings) -> dict[str, Any]:
    """Documents per captured collection, and when the newest change to them was made (cluster time)."""
    from lakehouse.adapters.mongo import connect as connect_mongo
    from lakehouse.adapters.mongo import newest_change_time

    client = connect_mongo(settings, "lakehouse-status", timeout_ms=5000)
    try:
        db = client[settings.mongo_db]
        counts = {name: db[name].estimated_document_count() for name in settings.collections}
        newest = newest_change_time(client, settings.mongo_db, settings.collections)
        return {"state": "ok", "collections": counts, "newest_change": _iso(newest)}
    finally:
        client.close()


def collect(settings: Settings) -> dict[str, Any]:
    report: dict[str, Any] = {"at": _iso(datetime.now(UTC).timestamp())}
    for name, reader in (("mongodb", mongo_status), ("producer", producer_status), ("kafka", kafka_status),
                         ("spark", spark_status), ("warehouse", warehouse_status),
                         ("reconcile", reconcile_status)):
        try:
            report[name] = reader(settings)
        except Exception as exc:  # noqa: BLE001 - one stage down must not hide the others
            known = explain(settings, exc)
            report[name] = {"state": f"unavailable: {known or f'{type(exc).__name__}: {exc}'}"}
    source = report["mongodb"].get("newest_change")
    loaded = report["warehouse"].get("newest_change")
    report["freshness_seconds"] = (
        max(0, round(_seconds(source) - _seconds(loaded))) if source and loaded else None
    )
    return report


def _seconds(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def render(report: dict[str, Any]) -> list[str]:
    """The report as a few human lines, one block per stage."""
    m, p, k, s, w = (report[n] for n in ("mongodb", "producer", "kafka", "spark", "warehouse"))
    lines = [f"status at {report['at']}"]
    lines.append(f"  mongodb    {m['state']}" if m["state"] != "ok" else
                 f"  mongodb    {', '.join(f'{n} {c}' for n, c in m['collections'].items())}, newest change "
                 f"{m['newest_change']}")
    lines.append(f"  producer   {p['state']}" if p["state"] != "ok" else
                 f"  producer   {p['events_published']} events published, last change {p['last_change_time']}, "
                 f"token saved {p['token_saved_at']}")
    if p.get("last_lifecycle_event"):
        e = p["last_lifecycle_event"]
        lines.append(f"             last lifecycle event: {e['operation']} of {e['db']}.{e['collection'] or '*'}"
                     f"{' to ' + e['to'] if e.get('to') else ''} at cluster time {e['cluster_time']} "
                     f"(ended: {', '.join(e['ended']) or 'nothing captured'})")
    if k["state"] != "ok":
        lines.append(f"  kafka      {k['state']}")
    else:
        lines.append(f"  kafka      lag {k['total_lag']} messages (end offset - lake query's committed offset)")
        lines += [f"             {q['topic']}[{q['partition']}] end {q['end_offset']} committed "
                  f"{q['committed_offset']} lag {q['lag']}" for q in k["partitions"]]
        letters = k.get("dead_letters") or {}
        if letters.get("total"):
            lines.append(f"             dead-lettered {letters['total']} event(s) to {letters['topic']}: "
                         + "; ".join(f"{n} x {reason}" for reason, n in sorted(letters["by_reason"].items())))
        if k.get("loss_watch_unknown"):
            u = k["loss_watch_unknown"]
            lines.append(f"             loss watch: Kafka has not answered it since {u['since']} ({u['failures']} "
                         f"looks, last {u['last']}: {u['error']}); losses in that time are not known yet")
        if k.get("data_loss"):
            lost = sum(d["to"] - d["from"] for d in k["data_loss"])
            newest = k["data_loss"][-1]
            lines.append(f"             DATA LOSS: {len(k['data_loss'])} time(s), {lost} records the streaming job had "
                         f"read or planned are gone from Kafka (last {newest['at']} {newest['topic']}"
                         f"[{newest['partition']}] {newest['from']}..{newest['to'] - 1}); run `lakehouse reconcile "
                         "--repair`")
    lines.append(f"  spark      {s['state']}" if s["state"] != "ok" else
                 f"  spark      {s['batches']} batches, {s['input_rows']} rows in, {s['silver_rows']} to silver, "
                 f"{s['quarantined']} quarantined, {s['late']} late, watermark {s['watermark']}, "
                 f"last batch {s['last_batch_at']} ({s['last_batch_ms']} ms)")
    if s["state"] == "ok" and s.get("quality"):
        lines.append(f"  quality    {s['quality_quarantined']} quarantined and {s['flagged']} flagged by rules: "
                     + ", ".join(f"{rule} {failed}/{checked}" for rule, (checked, failed) in s["quality"].items())
                     + " (failed/checked)")
    lines.append(f"  warehouse  {w['state']}" if w["state"] != "ok" else
                 f"  warehouse  silver v{w['loaded_version']} loaded (lake at v{w['silver_version']}, "
                 f"{w['versions_behind']} behind), newest change {w['newest_change']}")
    for name in dict.fromkeys([*(m.get("collections") or {}), *(w.get("collections") or {})]):
        in_mongo = (m.get("collections") or {}).get(name)
        held = (w.get("collections") or {}).get(name) or {}
        lines.append(f"             {name:<12} mongodb {'?' if in_mongo is None else in_mongo}, warehouse "
                     f"{held.get('table', name)} {held.get('current', '?')} current ({held.get('changes', '?')} "
                     f"changes, silver v{held.get('loaded_version')})")
    r = report.get("reconcile", {"state": "unknown"})
    lines.append(f"  reconcile  {r['state']}" if r["state"] != "ok" else
                 f"  reconcile  {r['at']} {r['collection']}: source={r['source']} warehouse={r['warehouse']} "
                 f"missing={r['missing']} extra={r['extra']} mismatched={r['mismatched']} repaired={r['repaired']}"
                 + (f" (deferred: {r.get('in_flight', 0)} documents in flight)" if r.get("deferred")
                    else f" (in flight: {r['in_flight']})" if r.get("in_flight") else "")
                 + (f" (dead-lettered: {r['dead_lettered']})" if r.get("dead_lettered") else "")
                 + (f" (quarantined by a quality rule: {r['quarantined']})" if r.get("quarantined") else ""))
    fresh = report["freshness_seconds"]
    lines.append(f"  end to end {'unknown' if fresh is None else f'{fresh} s'} between the newest change in "
                 "MongoDB and in the warehouse")
    return lines


def one_line(report: dict[str, Any]) -> str:
    """The report in one line, for a live view (`run-all --follow`)."""
    m, k, s, w = (report[n] for n in ("mongodb", "kafka", "spark", "warehouse"))
    parts = [
        f"mongodb {sum(m['collections'].values()):,} documents" if m["state"] == "ok" else "mongodb unavailable",
        f"kafka lag {k['total_lag']:,}" if k["state"] == "ok" else "kafka unavailable",
        f"spark {s['batches']:,} batches, {s['silver_rows']:,} silver rows, {s['quarantined']:,} quarantined"
        if s["state"] == "ok" else "spark no batches yet",
        f"warehouse {sum(c.get('current') or 0 for c in w['collections'].values()):,} documents "
        f"({w['versions_behind']} versions behind)"
        if w["state"] == "ok" and w["loaded_version"] is not None else "warehouse not loaded yet",
    ]
    fresh = report["freshness_seconds"]
    parts.append(f"end to end {'?' if fresh is None else f'{fresh} s'}")
    return f"{report['at'][11:]} " + " | ".join(parts)


def metric_families(report: dict[str, Any]) -> list[GaugeMetricFamily]:
    """The report as Prometheus gauges (prometheus_client's families): the monitor's figures."""
    out: list[GaugeMetricFamily] = []

    def gauge(name: str, help_text: str, samples: list[tuple[dict[str, Any], Any]]) -> None:
        samples = [(labels, value) for labels, value in samples if value is not None]
        if not samples:
            return
        family = GaugeMetricFamily(f"lakehouse_{name}", help_text, labels=list(samples[0][0]))
        for labels, value in samples:
            family.add_metric([str(v) for v in labels.values()], float(value))
        out.append(family)

    p, k, s, w = (report[n] for n in ("producer", "kafka", "spark", "warehouse"))
    gauge("up", "1 when the stage could be read", [({"stage": n}, int(report[n].get("state") == "ok"))
                                                  for n in ("mongodb", "producer", "kafka", "spark", "warehouse")])
    gauge("producer_events_published", "Events the producer has had acknowledged by Kafka",
          [({}, p.get("events_published"))])
    gauge("producer_last_change_timestamp_seconds", "Cluster time of the last captured change",
          [({}, _seconds(p["last_change_time"]) if p.get("last_change_time") else None)])
    gauge("kafka_end_offset", "Kafka end offset",
          [({"topic": q["topic"], "partition": q["partition"]}, q["end_offset"]) for q in k.get("partitions", [])])
    gauge("kafka_lag_messages", "End offset minus the lake query's committed offset",
          [({"topic": q["topic"], "partition": q["partition"]}, q["lag"]) for q in k.get("partitions", [])])
    for key, help_text in (("batches", "Micro-batches completed"), ("input_rows", "Rows read from Kafka"),
                           ("silver_rows", "Rows written to silver"), ("quarantined", "Rows quarantined"),
                           ("late", "Rows later than the watermark"),
                           ("quality_quarantined", "Rows a quality rule of severity quarantine kept out of silver"),
                           ("flagged", "Silver rows that broke a quality rule of severity flag")):
        gauge(f"spark_{key}", help_text, [({}, s.get(key))])
    quality = s.get("quality") or {}
    gauge("quality_checked", "Changes each quality rule judged", [({"rule": r}, n[0]) for r, n in quality.items()])
    gauge("quality_failed", "Changes that broke each quality rule", [({"rule": r}, n[1]) for r, n in quality.items()])
    gauge("warehouse_loaded_version", "Silver Delta version the warehouse has loaded", [({}, w.get("loaded_version"))])
    gauge("warehouse_versions_behind", "Silver versions not yet loaded", [({}, w.get("versions_behind"))])
    gauge("warehouse_changes", "Rows of each collection's changes table",
          [({"collection": n}, c.get("changes")) for n, c in (w.get("collections") or {}).items()])
    gauge("warehouse_documents", "Documents in each collection's current-state table",
          [({"collection": n}, c.get("current")) for n, c in (w.get("collections") or {}).items()])
    gauge("mongodb_documents", "Documents in each captured collection (estimated count)",
          [({"collection": n}, c) for n, c in ((report["mongodb"].get("collections") or {}).items())])
    gauge("kafka_data_loss_records", "Kafka records the streaming job had read or planned that the broker lost",
          [({}, sum(d["to"] - d["from"] for d in k.get("data_loss", [])) if k.get("state") == "ok" else None)])
    letters = k.get("dead_letters") or {}
    gauge("dead_lettered_events", "Events the producer sent to the dead-letter topic",
          [({}, letters.get("total"))])
    gauge("dead_lettered_by_reason", "Dead-lettered events by reason (of the newest read)",
          [({"reason": reason}, n) for reason, n in (letters.get("by_reason") or {}).items()])
    r = report.get("reconcile", {})
    for key in ("missing", "extra", "mismatched", "repaired", "quarantined", "dead_lettered", "in_flight", "deferred",
                "compared_in_full"):  # compared in full: digests differed (real mismatches, or rows without one)
        gauge(f"reconcile_{key}", f"Documents {key} at the last reconcile", [({}, r.get(key))])
        gauge(f"reconcile_collection_{key}", f"Documents {key} per collection at the last reconcile",
              [({"collection": c["collection"]}, c.get(key)) for c in r.get("collections") or []])
    gauge("freshness_seconds", "Newest change in MongoDB minus newest in the warehouse",
          [({}, report.get("freshness_seconds"))])
    return out


class StatusCollector(Collector):
    """Collects the status report at each scrape (`lakehouse metrics --serve`, the monitor)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> list[GaugeMetricFamily]:
        return metric_families(collect(self.settings))


def prometheus(report: dict[str, Any]) -> str:
    """The same figures in Prometheus' text format, for a scrape."""

    class Fixed(Collector):
        def collect(self) -> list[GaugeMetricFamily]:
            return metric_families(report)

    registry = CollectorRegistry()
    registry.register(Fixed())
    return generate_latest(registry).decode()
