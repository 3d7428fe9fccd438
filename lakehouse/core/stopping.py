"""Stopping long-running commands cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from typing import Any


class Interrupted(Exception):  # noqa: N818 - a stop request, not an error: outside LakehouseError
    """Ctrl-C or SIGTERM arrived."""


class StopSignals:
    """Ctrl-C and SIGTERM set a flag that a command's loop looks at between steps. Not KeyboardInterrupt:
    DuckDB, pyarrow and the database drivers may catch an exception raised inside their calls and carry
    on (a `run-all --follow` ignored Ctrl-C that way). Installed even where the shell started the
    command with SIGINT ignored (a background job)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = on_signal(signum, lambda *_: self.requested.set())
        return self

    def __exit__(self, *_: object) -> None:
        for signum, handler in self._previous.items():
            on_signal(signum, handler)

    def check(self) -> None:
        if self.requested.is_set():
            raise Interrupted

    def wait(self, seconds: float) -> None:
        if self.requested.wait(seconds):
            raise Interrupted


def on_signal(signum: int, handler: Any) -> Any:
    """signal.signal where Python allows it (the main thread); elsewhere the caller's signals rule."""
    if threading.current_thread() is not threading.main_thread() or handler is None:
        return None
    return signal.signal(signum, handler)
