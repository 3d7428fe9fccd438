from pathlib import Path

import pytest

from lakehouse.events import SourcePosition
from producer.checkpoint import Checkpoint, FileCheckpointStore


def test_round_trip_and_no_temp_files_left(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path / "p" / "token.json")
    assert store.load() is None
    saved = Checkpoint({"_data": "82AB"}, SourcePosition(1, 2, 3), events_published=7)
    store.save(saved)
    assert store.load() == saved
    store.save(Checkpoint({"_data": "82AC"}, None))
    assert store.load() == Checkpoint({"_data": "82AC"}, None, 0)
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["token.json"]


def test_corrupt_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    path.write_text("{not json")
    with pytest.raises(RuntimeError, match="--snapshot initial"):
        FileCheckpointStore(path).load()
