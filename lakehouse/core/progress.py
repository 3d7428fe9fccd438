"""Progress of long work (snapshot, replay, load, run-all): counts, rate and ETA.

On a terminal it is a live tqdm bar on stderr. Otherwise (a log file, CI, `--log-format json`) it is a
log line every few seconds and one at the end, so logs stay line-oriented and grep-able; in JSON the
figures are fields of their own (`progress`).
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any, TextIO

from lakehouse.core import logs

log = logging.getLogger("lakehouse.core.progress")


def on_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return not logs.is_json() and hasattr(stream, "isatty") and stream.isatty()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """`with Progress("snapshot", total=n, unit="documents") as p: ... p.advance(k)`."""

    def __init__(self, what: str, total: int | None = None, unit: str = "rows", every: float = 5.0,
                 stream: TextIO | None = None, terminal: bool | None = None) -> None:
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.done = 0
        self.started = self._reported = time.monotonic()
        self._bar: Any = None
        self._redirect: Any = None
        if on_terminal(stream) if terminal is None else terminal:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total, desc=what, unit=f" {unit}", file=stream or sys.stderr,
                             dynamic_ncols=True, mininterval=0.5, leave=False)
            # Log lines printed meanwhile go above the bar instead of through it.
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def advance(self, n: int = 1) -> None:
        self.update_to(self.done + n)

    def update_to(self, done: int, total: int | None = None) -> None:
        if total is not None and total != self.total:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
        if self._bar is not None:
            self._bar.update(done - self.done)
        self.done = done
        if self._bar is None and time.monotonic() - self._reported >= self.every:
            self._reported = time.monotonic()
            self._log(self.line())

    def figures(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        remaining = None
        if self.total is not None and rate > 0:
            remaining = max(0.0, (self.total - self.done) / rate)
        return {"what": self.what, "done": self.done, "total": self.total, "unit": self.unit,
                "rate_per_s": round(rate, 1), "elapsed_s": round(elapsed, 1),
                "eta_s": None if remaining is None else round(remaining, 1)}

    def line(self) -> str:
        f = self.figures()
        count = f"{f['done']:,}" if f["total"] is None else f"{f['done']:,}/{f['total']:,}"
        eta = "" if f["eta_s"] is None else f", eta {_duration(f['eta_s'])}"
        return f"{self.what}: {count} {self.unit} ({f['rate_per_s']:,.0f}/s{eta})"

    def close(self, summary: str | None = None) -> None:
        """End the bar; log one final line (the summary, or the totals and the mean rate) unless the
        work was too short (under a second) to need one."""
        reported = self._reported > self.started
        self._end_bar()
        f = self.figures()
        if summary or reported or f["elapsed_s"] >= 1.0:
            self._log(summary or f"{self.what}: {f['done']:,} {self.unit} in {_duration(f['elapsed_s'])} "
                                 f"({f['rate_per_s']:,.0f}/s)")

    def _log(self, message: str) -> None:
        log.info(message, extra={"progress": self.figures()})

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self._end_bar()

    def _end_bar(self) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
