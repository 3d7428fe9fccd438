from pathlib import Path

import pytest

from lakehouse.contracts.events import SourcePosition
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


def test_journal_keeps_one_entry_per_acknowledged_state_and_rewinds(tmp_path: Path) -> None:
    from producer.checkpoint import shortfall

    store = FileCheckpointStore(tmp_path / "token.json", journal_entries=3)
    store.load()
    for n, acked in enumerate([{"t:0": 10}, {"t:0": 20}, {"t:0": 20}, {"t:0": 30}, {"t:0": 40}]):
        store.save(Checkpoint({"_data": f"{n:02X}"}, SourcePosition(n, 0, 0), n, acked))
    again = FileCheckpointStore(tmp_path / "token.json")
    assert again.load() == Checkpoint({"_data": "04"}, SourcePosition(4, 0, 0), 4, {"t:0": 40})
    # An idle heartbeat (same acknowledged offsets) replaced its entry; the oldest fell off the end.
    assert [c.resume_token["_data"] for c in again.journal()] == ["02", "03", "04"]
    held = {"t:0": 33}
    assert shortfall(again.load().acked_offsets, held) == {"t:0": (33, 40)}
    target = next(c for c in reversed(again.journal()) if not shortfall(c.acked_offsets, held))
    again.rewind_to(target, held)
    third = FileCheckpointStore(tmp_path / "token.json")
    current = third.load()
    assert current.resume_token == {"_data": "03"} and current.acked_offsets == {"t:0": 33}
    assert [c.resume_token["_data"] for c in third.journal()] == ["02", "03"]


def test_a_checkpoint_of_a_development_build_or_a_newer_release_is_refused_with_what_to_run(tmp_path: Path) -> None:
    import json

    path = tmp_path / "token.json"
    FileCheckpointStore(path).save(Checkpoint({"_data": "82AB"}, None, 3, collections=("orders",)))
    raw = json.loads(path.read_text())
    assert raw["format_version"] == 1
    for stored, says in ((None, "a producer checkpoint of a development build"),
                         (2, "a producer checkpoint format v2, newer than this release reads")):
        path.write_text(json.dumps({k: v for k, v in raw.items() if k != "format_version"}
                                   | ({} if stored is None else {"format_version": stored})))
        with pytest.raises(RuntimeError, match=f"{says}.*lakehouse replay --into kafka --from-beginning"):
            FileCheckpointStore(path).load()
    path.write_text("[1, 2]")
    with pytest.raises(RuntimeError, match="not a checkpoint of this producer"):
        FileCheckpointStore(path).load()
