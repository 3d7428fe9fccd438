"""Kafka data loss under the running stream, found on the driver from Kafka's metadata.

Spark's Kafka source with failOnDataLoss=false goes on past records the broker no longer holds (retention
passed unread offsets, a topic deleted and re-created), and cannot see a re-created topic that has grown
past the query's position (its offsets re-used by new records). This watch sees all three: after each
batch it keeps, per partition, the next offset and a fingerprint of the record before it; before the next
batch (and every so often while idle) it asks Kafka whether that record is still there. A loss is logged
with the partition and range, appended to the data-loss record (`status` and the metrics read it), and
left to `lakehouse reconcile --repair`; with failOnDataLoss=true the job stops instead, naming it.

It reads offsets and one record per partition: no batch data.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lakehouse.adapters.kafka import KafkaTransient, OffsetReader
from lakehouse.contracts.positions import (
    batch_offsets,
    fingerprint,
    fingerprint_time,
    is_spark_form,
    read_offsets,
    spark_form,
    split_key,
)
from lakehouse.core.config import Settings
from lakehouse.core.errors import Permanent
from lakehouse.core.files import write_json_atomically
from streaming import metrics

log = logging.getLogger(__name__)
KEPT_BATCHES = 3  # positions kept for the batches a restart may replay
LOSS_CHECK_SECONDS = 15.0  # how often an idle stream asks Kafka whether what it read is still there


class KafkaDataLoss(Permanent, RuntimeError):
    """The broker no longer holds records the query has read or planned (failOnDataLoss=true)."""


# How a query failure for lost data reads: this watch's own words, or those of Spark's Kafka source.
LOSS_MESSAGES = ("no longer holds records", "some data may have been missed", "data may have been lost")


def is_data_loss(message: str) -> bool:
    return any(phrase in message.lower() for phrase in LOSS_MESSAGES)


def find_losses(positions: dict[str, int], seen: dict[str, str | None], begins: dict[str, int],
                ends: dict[str, int], now_at: dict[str, str | None]) -> list[dict[str, Any]]:
    """The losses since the query reached `positions` (next offsets) having read the records `seen` (their
    fingerprints) before them: the end went back below a position, records at or after it were deleted
    unread, or the record before it is another one now (`now_at`: the fingerprint there now). `from` is
    left None where new records took the offsets over: the caller finds where they begin."""
    losses: list[dict[str, Any]] = []
    for key, offset in positions.items():
        if key not in ends:
            continue
        if ends[key] < offset:
            # The stream goes on from the new end: the new records below it are the ones it skipped.
            losses.append({"partition": key, "from": None if seen.get(key) else begins.get(key, 0), "to": ends[key],
                           "reason": f"end offset went back from {offset} to {ends[key]} (topic re-created or "
                                     "truncated); the new records below it were skipped"})
        elif begins.get(key, 0) > offset:
            losses.append({"partition": key, "from": offset, "to": begins[key],
                           "reason": "records were deleted before they were read (retention or topic re-created)"})
        elif seen.get(key) and key in now_at and now_at[key] != seen[key]:
            losses.append({"partition": key, "from": None, "to": offset,
                           "reason": f"offset {offset - 1} holds another record than the one read ({now_at[key]} "
                                     f"instead of {seen[key]}): the topic was re-created and its offsets re-used; "
                                     "the new records below the stream's position were skipped"})
    return losses


class LossWatch:
    def __init__(self, bootstrap: str, checkpoint: Path, state: Path, loss_log: Path | None,
                 fail_on_data_loss: bool, unknown_state: Path | None = None) -> None:
        self.reader = OffsetReader(bootstrap)
        self.checkpoint = checkpoint
        self.state = state
        self.loss_log = loss_log
        self.fail_on_data_loss = fail_on_data_loss
        self.unknown_state = unknown_state
        self._reported: set[tuple[str, Any, Any]] = set()
        self._unknown: dict[str, Any] | None = None  # the episode in which Kafka does not answer the watch

    def check(self, before_batch: int | None = None) -> None:
        """Compare the newest kept positions (before `before_batch`, or the newest) with what Kafka holds.
        A Kafka that does not answer leaves the question open until the next look: the watch only watches,
        so it never stops the stream (KafkaDataLoss, when failOnDataLoss asks for it, does)."""
        self._unless_kafka_fails("check", lambda: self._check(before_batch))

    def remember(self, batch_id: int) -> None:
        """Keep where batch `batch_id` ends (Spark's offsets log) and the record before each position; when
        Kafka does not answer, the earlier batch's positions stay the ones compared."""
        self._unless_kafka_fails("remember", lambda: self._remember(batch_id))

    def _unless_kafka_fails(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except (KafkaTransient, OSError) as exc:
            metrics.STREAM_LOSS_WATCH_ERRORS.inc()
            self.reader.close()  # its clients are made again at the next look
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if self._unknown is None:
                self._unknown = {"since": now, "failures": 0}
                log.warning("the Kafka loss watch could not %s (%s: %s); it asks again at the next batch or in "
                            "%.0f s, and the stream goes on meanwhile", what, type(exc).__name__, exc,
                            LOSS_CHECK_SECONDS)
            self._unknown.update(failures=self._unknown["failures"] + 1, last=now,
                                 error=f"{type(exc).__name__}: {exc}")
            if self.unknown_state is not None:
                write_json_atomically(self.unknown_state, self._unknown)
            return
        if self._unknown is not None:
            log.warning("the Kafka loss watch gets answers again (after %d failed looks since %s)",
                        self._unknown["failures"], self._unknown["since"])
            self._unknown = None
            if self.unknown_state is not None:
                self.unknown_state.unlink(missing_ok=True)

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.state.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _check(self, before_batch: int | None) -> None:
        kept = {int(k): v for k, v in self._load().items()}
        earlier = [b for b in kept if before_batch is None or b < before_batch]
        if not earlier:
            return
        entry = kept[max(earlier)]
        positions: dict[str, int] = entry["positions"]
        seen: dict[str, str | None] = entry["seen"]
        keys = list(positions)
        begins, ends = self.reader.begin_offsets(keys), self.reader.end_offsets(keys)
        probe = {k: o - 1 for k, o in positions.items() if seen.get(k) and begins.get(k, 0) < o <= ends.get(k, 0)}
        now_at = self._fingerprints(probe)
        losses = find_losses(positions, seen, begins, ends, now_at)
        for loss in losses:
            if loss["from"] is None:  # new records took the offsets over: where do they begin?
                key = loss["partition"]
                found = self.reader.first_offset_at(key, fingerprint_time(seen[key] or "0:0:0"))
                ceiling = min(loss["to"], ends.get(key, loss["to"]))
                loss["from"] = max(begins.get(key, 0), min(found if found is not None else ceiling, ceiling))
        losses = [loss for loss in losses if loss["to"] > loss["from"]
                  and (loss["partition"], loss["from"], loss["to"]) not in self._reported]
        if losses:
            self._report(losses)

    def _remember(self, batch_id: int) -> None:
        positions = batch_offsets(self.checkpoint, batch_id)
        seen = self._fingerprints({k: o - 1 for k, o in positions.items() if o > 0})
        kept = {int(k): v for k, v in self._load().items() if int(k) < batch_id}
        kept[batch_id] = {"positions": positions, "seen": {k: seen.get(k) for k in positions}}
        write_json_atomically(self.state, {str(b): kept[b] for b in sorted(kept)[-KEPT_BATCHES:]})

    def _fingerprints(self, wanted: dict[str, int]) -> dict[str, str | None]:
        return {key: None if record is None else fingerprint(record.offset, record.timestamp, record.value)
                for key, record in self.reader.records_at(wanted).items()}

    def _report(self, losses: list[dict[str, Any]]) -> None:
        lines = [f"{loss['partition']} offsets {loss['from']}..{loss['to'] - 1}: {loss['reason']}" for loss in losses]
        if self.fail_on_data_loss:
            raise KafkaDataLoss(
                "Kafka no longer holds records this query read or planned to read: " + "; ".join(lines)
                + ". Set failOnDataLoss=false (KAFKA_FAIL_ON_DATA_LOSS=false) to record such losses and go on from "
                "what the broker holds, then repair the warehouse with `lakehouse reconcile --repair`")
        for line in lines:
            log.error("KAFKA DATA LOSS: %s; going on from what the broker holds now", line)
        for loss in losses:
            self._reported.add((loss["partition"], loss["from"], loss["to"]))
            metrics.STREAM_DATA_LOSS.inc(loss["to"] - loss["from"])
        if self.loss_log is not None:
            self.loss_log.parent.mkdir(parents=True, exist_ok=True)
            with self.loss_log.open("a") as handle:
                for loss in losses:
                    topic, partition = split_key(loss["partition"])
                    handle.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "topic": topic,
                                             "partition": partition, "from": loss["from"], "to": loss["to"],
                                             "reason": loss["reason"]}) + "\n")

    def close(self) -> None:
        self.reader.close()


def loss_watch(settings: Settings) -> LossWatch:
    """The lake query's watch, with its state files where `status` reads them."""
    return LossWatch(settings.kafka_bootstrap_servers, settings.spark_checkpoint,
                     settings.state_dir / "spark" / "kafka_positions.json", settings.data_loss_log,
                     settings.kafka_fail_on_data_loss, settings.loss_watch_unknown)


def migrate_checkpoint(checkpoint: Path) -> bool:
    """Rewrite a lake checkpoint of the earlier Python Kafka source in Spark's Kafka source form: each
    planned batch's positions become {"topic": {"partition": next offset}}, and the source's own metadata
    folder goes (Spark's source writes its own at the next start). True when something was rewritten."""
    rewritten = False
    for path in sorted((checkpoint / "offsets").glob("[0-9]*"), key=lambda p: int(p.name)):
        lines = path.read_text().splitlines()
        if len(lines) > 2 and not is_spark_form(lines[2]):
            lines[2] = spark_form(read_offsets(lines[2]))
            tmp = path.with_name(f".{path.name}.migrating")
            tmp.write_text("\n".join(lines))
            tmp.replace(path)
            rewritten = True
    if rewritten:
        shutil.rmtree(checkpoint / "sources", ignore_errors=True)
        for crc in (checkpoint / "offsets").glob(".*.crc"):
            crc.unlink()
        log.warning("checkpoint %s was written by the earlier Python Kafka source: its positions were rewritten "
                    "for Spark's Kafka source, which goes on from the same offsets", checkpoint)
    return rewritten
