"""The high-value flag in Spark SQL functions (streaming/udfs.high_value_sql) gives what the rule in Python
gives (streaming/amounts.is_high_value), value by value, for generated amounts, currencies and thresholds."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.amounts import is_high_value, parse_thresholds
from streaming.udfs import high_value_sql

pytestmark = pytest.mark.spark

amounts = st.one_of(st.none(), st.decimals(min_value=-10**6, max_value=10**6, places=2, allow_nan=False,
                                           allow_infinity=False))
currencies = st.one_of(st.none(), st.sampled_from(["USD", "usd", "EUR", "GBP", "JPY", "", "XTS"]))
specs = st.sampled_from(["USD:1000,EUR:900,default:500", "USD:1000", "default:0", "EUR:0.01,GBP:250.5"])


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(amounts, currencies), min_size=1, max_size=200), specs)
def test_sql_flag_equals_the_python_rule(spark_local: object, rows: list[tuple[Decimal | None, str | None]],
                                         spec: str) -> None:
    from pyspark.sql import functions as F

    data = pa.table({"n": list(range(len(rows))), "amount": pa.array([a for a, _ in rows], pa.decimal128(18, 2)),
                     "currency": pa.array([c for _, c in rows], pa.string())})
    frame = spark_local.createDataFrame(data)  # type: ignore[attr-defined]
    got = [r["flag"] for r in frame.select("n", high_value_sql(F.col("amount"), F.col("currency"), spec)
                                           .alias("flag")).orderBy("n").collect()]
    thresholds = parse_thresholds(spec)
    assert got == [is_high_value(a, c, thresholds) for a, c in rows]
