"""Every notebook in notebooks/ runs headless, start to end, against a small pipeline run."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from tests.helpers import drain, stream_lake
from warehouse.loader import load

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs() -> None:
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        dirty = [i for i, cell in enumerate(book.cells)
                 if cell.cell_type == "code" and (cell.outputs or cell.execution_count)]
        assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


def test_every_notebook_runs(spark: object, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from streaming.job import start_derived

    # Thresholds the generator's young stock crosses, and sessions/windows short enough to close in a small run.
    settings = settings.replace(inventory_low=55, inventory_critical=30, session_gap="2 seconds",
                                watermark_delay="2 seconds")
    client = connect_mongo(settings)
    OrderGenerator.for_database(client[settings.mongo_db], settings.collections, seed=3, violations=0.05).run(
        200, rate=40)
    client.close()
    drain(settings)
    stream_lake(spark, settings)
    for query in start_derived(spark, settings, available_now=True):  # type: ignore[arg-type]
        query.awaitTermination(600)
        assert query.exception() is None, query.exception()
    load(settings)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)  # the kernel inherits them: the notebooks read Settings.from_env()
    repo = NOTEBOOKS[0].parents[1]
    monkeypatch.setenv("PYTHONPATH", str(repo))
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(repo)}}).execute()
        images = sum(1 for cell in book.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {}))
        assert images, f"{path.name} drew no plot"
