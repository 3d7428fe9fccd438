"""The loader service's round, the one loop body behind `lakehouse load --every` and `run-all --follow`.

Each round loads what is new in the lake (DuckDB is opened only when silver has a new version, so
polling often is cheap) and, when due, reconciles with MongoDB and repairs what differs; the loads go on
between the reconcile round's reads, which take minutes on a big collection. A service
never stops on a round that failed: the lake not made yet, a reader holding the warehouse or a server
away are said and tried again next round. Only what waiting cannot set right (a warehouse of another
lake) or a stop request ends it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lakehouse.adapters import explain
from lakehouse.app.reconcile import round_of
from lakehouse.core.config import Settings
from lakehouse.core.stopping import Interrupted
from warehouse.connection import same_process_turn
from warehouse.errors import LakeMismatch, LakeMissing, WarehouseLocked
from warehouse.lake import silver_version
from warehouse.loader import LoadResult, load

log = logging.getLogger(__name__)


@dataclass
class LoaderService:
    """What one process's rounds remember: the silver version loaded last, and when it last reconciled."""

    settings: Settings
    every: float = 5.0  # seconds between rounds: said when a round failed
    reconcile_every: float | None = None
    repair: bool = True
    settle: float = 15.0
    say: Callable[[str], None] = log.info
    wait: Callable[[float], object] = time.sleep
    loaded_version: int | None = None
    ready: bool = False
    _reconciled_at: float = field(default_factory=time.monotonic)
    _looked_at: float = field(default_factory=time.monotonic)  # when the lake was last looked at for a load
    _waiting_said: bool = False

    def round(self) -> LoadResult | None:
        """Load if silver moved on, reconcile if due; the load's result, or None when nothing was loaded."""
        try:
            result = None
            if not self.ready or silver_version(self.settings) != self.loaded_version:
                result = self._load()
            if self.reconcile_every is not None and time.monotonic() - self._reconciled_at >= self.reconcile_every:
                round_of(self.settings, self.repair, self.settle, self._keep_loading, self._between_reads,
                         say=self.say)
                self._reconciled_at = time.monotonic()
            return result
        except LakeMissing as exc:  # the streaming job will create it
            if not self._waiting_said:
                self.say(f"waiting for the lake: {exc}")
            self._waiting_said = True
        except WarehouseLocked as exc:  # a reader holds it: a service waits, never exits
            log.warning("%s; trying again", exc)
        except (Interrupted, LakeMismatch):  # waiting would not set another lake right
            raise
        except Exception as exc:  # noqa: BLE001 - a service logs a failed round and goes on
            log.error("load or reconcile failed, trying again in %gs: %s", self.every,
                      explain(self.settings, exc) or f"{type(exc).__name__}: {exc}")
        return None

    def _load(self) -> LoadResult:
        result = load(self.settings)
        self.loaded_version, self.ready, self._looked_at = result.delta_version, True, time.monotonic()
        return result

    def _between_reads(self, seconds: float) -> object:
        """The reconcile round's pause between its reads and repairs: a stop ends the round (`wait` raises
        Interrupted), and what silver has new is loaded every `every` seconds, as between rounds."""
        if time.monotonic() - self._looked_at >= self.every:
            self._keep_loading()
        return self.wait(seconds)

    def _keep_loading(self) -> None:
        """A load during a reconcile round, when silver moved on. Not while the round holds the warehouse
        open to read it (one process cannot hold it read-only and read-write at once: the round's turn), and
        not when another process holds it (the next pause tries again)."""
        self._looked_at = time.monotonic()
        if not same_process_turn.acquire(blocking=False):
            return
        try:
            with contextlib.suppress(LakeMissing, WarehouseLocked):
                if silver_version(self.settings) != self.loaded_version:
                    self._load()
        finally:
            same_process_turn.release()
