"""A server away, waited out by a service: said once when the episode begins, each later try at INFO,
tried again with back-off (1 s doubling up to a ceiling); a stop request ends the wait at once."""

from __future__ import annotations

import logging
import threading
import time

WAIT_MAX_S = 30.0  # the longest pause between tries while a server is away


class AwayEpisode:
    def __init__(self, log: logging.Logger, ceiling: float = WAIT_MAX_S) -> None:
        self.log, self.ceiling = log, ceiling
        self.delay = 1.0
        self.since: float | None = None

    @property
    def away(self) -> bool:
        return self.since is not None

    def wait(self, cause: BaseException, stop: threading.Event) -> bool:
        """Say it (once per episode), then wait the back-off; True when a stop came meanwhile."""
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s; waiting for it: trying again with back-off (up to every %.0f s) until it answers "
                             "or a stop is asked", cause, self.ceiling)
        else:
            self.log.info("still away after %.0f s: %s", time.monotonic() - self.since, cause)
        stopped = stop.wait(self.delay)
        self.delay = min(2 * self.delay, self.ceiling)
        return stopped

    def over(self) -> None:
        """It answered: the next failure is a new episode."""
        if self.since is not None:
            self.log.warning("it answers again after %.0f s", time.monotonic() - self.since)
        self.delay, self.since = 1.0, None
