"""parse_amount + is_high_value in Spark: vectorised pandas UDFs against plain Python UDFs and Spark SQL.

Same rules (streaming/amounts.py), same rows, same local Spark; only the flavour differs:
  pandas  - both as pandas_udf, rows cross to Python in Arrow batches
  sql     - the amount by the pandas UDF, the high-value flag by Spark SQL functions (what the job uses)
  arrow   - plain @udf with useArrow=True (Spark's Arrow-optimised Python UDF)
  plain   - plain @udf, rows pickled one at a time
A second table times the high-value flag alone, over amounts already parsed: pandas UDF against SQL.
Each flavour runs --repeat times over --rows cached rows; prints the best and median wall time and
rows/s. The first run of each flavour is a warm-up and not counted.

The rows are read from Parquet with Spark's vectorised reader off, so every flavour gets row input as
it does from the Kafka source. (On Spark 4.2.0 the arrow flavour hangs forever over columnar input,
SPARK-58241, fixed in later releases; and 4.2 makes every plain @udf Arrow-optimised by default.)

    .venv/bin/python bench/udf_bench.py --rows 500000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.functions import pandas_udf

from lakehouse.core.config import Settings
from lakehouse.core.logs import configure
from producer.generator import messy_amount
from streaming.amounts import is_high_value, money_from_document, parse_thresholds
from streaming.job import build_session
from streaming.udfs import MONEY_FIELDS, MONEY_TYPE, high_value_sql, high_values, money_columns


def plain_columns(document, thresholds_spec: str, use_arrow: bool) -> list:  # noqa: ANN001
    thresholds = parse_thresholds(thresholds_spec)
    money_type = T._parse_datatype_string(MONEY_TYPE)  # noqa: SLF001 - the same DDL the pandas UDF uses

    @F.udf(returnType=money_type, useArrow=use_arrow)
    def money(text: str | None) -> tuple:
        raw, currency, parsed = money_from_document(text)
        return raw, currency, parsed.value, parsed.currency, parsed.error

    @F.udf(returnType="boolean", useArrow=use_arrow)
    def high_value(amount: Decimal | None, code: str | None) -> bool | None:
        return is_high_value(amount, code, thresholds)

    parsed = money(document)
    return [*(parsed[name].alias(name) for name in MONEY_FIELDS),
            high_value(parsed["amount"], parsed["amount_currency"]).alias("is_high_value")]


def source(spark: SparkSession, rows: int, folder: Path) -> DataFrame:
    """Order documents with messy amounts as JSON text, as silver's full_document holds them, written once
    to Parquet."""
    rng = random.Random(7)
    values = [(json.dumps({"amount": messy_amount(rng), "currency": rng.choice(["USD", "EUR", None])}),)
              for _ in range(rows)]
    spark.createDataFrame(values, "document STRING").repartition(2).write.parquet(str(folder))
    return spark.read.parquet(str(folder))


def timed(frame: DataFrame) -> float:
    started = time.perf_counter()
    frame.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--flavours", default="pandas,sql,plain", help="comma-separated subset (arrow: see above)")
    args = parser.parse_args()
    configure("WARNING")
    settings = Settings.from_env()
    spark = build_session(settings)
    spark.conf.set("spark.sql.parquet.enableVectorizedReader", "false")  # row input; see the docstring
    thresholds = settings.high_value_thresholds
    with tempfile.TemporaryDirectory() as tmp:
        data = source(spark, args.rows, Path(tmp) / "amounts")
        amount_at, currency_at = F.lit("amount"), F.lit("currency")
        flavours = {
            "pandas": lambda: money_columns(F.col("document"), amount_at, currency_at, thresholds, high_value_udf=True),
            "sql": lambda: money_columns(F.col("document"), amount_at, currency_at, thresholds),
            "arrow": lambda: plain_columns(F.col("document"), thresholds, use_arrow=True),
            "plain": lambda: plain_columns(F.col("document"), thresholds, use_arrow=False),
        }
        results = {}
        for name in args.flavours.split(","):
            columns = flavours[name]
            frame = data.select(*columns())
            timed(frame)  # warm-up: Python workers start, the rules module is imported
            runs = [timed(frame) for _ in range(args.repeat)]
            results[name] = runs
            print(f"{name:>6}: best {min(runs):.2f} s, median {statistics.median(runs):.2f} s = "
                  f"{args.rows / min(runs):,.0f} rows/s (best)", flush=True)
        same = all(
            data.select(*flavours["pandas"]()).exceptAll(data.select(*flavours[other]())).count() == 0
            for other in args.flavours.split(",") if other != "pandas"
        )
        print(f"rows: {args.rows}, Spark {spark.version}, master {settings.spark_master}; "
              f"all flavours give identical rows: {same}")
        # The high-value flag alone, over parsed amounts (cached): the UDF's cost against SQL's.
        parsed = data.select(*flavours["sql"]()).select("amount", "amount_currency").cache()
        parsed.count()
        flags = {
            "pandas UDF": lambda: pandas_udf(high_values(thresholds), "boolean")(  # type: ignore[call-overload]
                F.col("amount"), F.col("amount_currency")),
            "SQL": lambda: high_value_sql(F.col("amount"), F.col("amount_currency"), thresholds),
        }
        for name, flag in flags.items():
            frame = parsed.select(flag().alias("flag"))
            timed(frame)
            runs = [timed(frame) for _ in range(args.repeat)]
            print(f"high-value flag alone, {name:>10}: best {min(runs):.2f} s = {args.rows / min(runs):,.0f} rows/s",
                  flush=True)
        agree = parsed.select(flags["pandas UDF"]().alias("f")).exceptAll(
            parsed.select(flags["SQL"]().alias("f"))).count() == 0
        print(f"high-value flag: pandas UDF and SQL agree on every row: {agree}")
    spark.stop()


if __name__ == "__main__":
    main()
