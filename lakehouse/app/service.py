"""The loader service's round, the one loop body behind `lakehouse load --every` and `run-all --follow`.

Each round loads what is new in the lake (DuckDB is opened only when silver has a new version, so
polling often is cheap) and, when due, reconciles with MongoDB and repairs what differs. A service
never stops on a round that failed: the lake not made yet, a reader holding the warehouse or a server
away are said and tried again next round. Only what waiting cannot set right (a warehouse of another
lake) or a stop request ends it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lakehouse.adapters import explain
from lakehouse.app.reconcile import round_of
from lakehouse.core.config import Settings
from lakehouse.core.stopping import Interrupted
from warehouse.errors import LakeMismatch, LakeMissing, WarehouseLocked
from warehouse.lake import silver_version
from warehouse.loader import LoadResult, load, load_if_possible

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
    _waiting_said: bool = False

    def round(self) -> LoadResult | None:
        """Load if silver moved on, reconcile if due; the load's result, or None when nothing was loaded."""
        try:
            result = None
            if not self.ready or silver_version(self.settings) != self.loaded_version:
                result = load(self.settings)
                self.loaded_version, self.ready = result.delta_version, True
            if self.reconcile_every is not None and time.monotonic() - self._reconciled_at >= self.reconcile_every:
                round_of(self.settings, self.repair, self.settle, lambda: load_if_possible(self.settings), self.wait,
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
