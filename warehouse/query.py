"""Read-only queries for analysts (the notebooks): a DataFrame per query, the file closed again at
once, so a running loader can take the warehouse back between queries (DuckDB lets one process write
*or* several read)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from warehouse.connection import connect


def sql_reader(path: Path) -> Callable[..., pd.DataFrame]:
    """`sql = sql_reader(settings.warehouse_path); sql("SELECT ... WHERE doc_id = ?", [doc_id])`: values
    go in as parameters, never formatted into the SQL."""

    def sql(query: str, parameters: list[Any] | dict[str, Any] | None = None) -> pd.DataFrame:
        con = connect(path, read_only=True)
        try:
            return con.execute(query, parameters or []).df()
        finally:
            con.close()

    return sql
