"""Read-only queries for analysts (the notebooks): a DataFrame per query, the file closed again at
once, so a running loader can take the warehouse back between queries (DuckDB lets one process write
*or* several read)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from warehouse.loader import connect


def sql_reader(path: Path) -> Callable[[str], pd.DataFrame]:
    """`sql = sql_reader(settings.warehouse_path); sql("SELECT ...")`."""

    def sql(query: str) -> pd.DataFrame:
        con = connect(path, read_only=True)
        try:
            return con.execute(query).df()
        finally:
            con.close()

    return sql
