"""Small state files that must survive a crash whole: the producer's resume token, the watermark."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomically(path: Path, body: Any) -> None:
    """Write to a temporary file, fsync it, rename it over `path`, fsync the folder: after a crash
    the file holds either the old or the new content, never a part."""
    write_text_atomically(path, json.dumps(body))


def write_text_atomically(path: Path, text: str) -> None:
    """As write_json_atomically, for text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
