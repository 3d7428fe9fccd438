"""The warehouse stage's errors: each message names the file or lake at fault and the command to run."""

from __future__ import annotations

from lakehouse.core.errors import LakehouseError, Permanent, Transient

REBUILD = "lakehouse replay --into warehouse --from-beginning"


class WarehouseError(LakehouseError, RuntimeError):
    """Bad input the operator has to act on; the message names the file and the next step."""


class LakeMissing(WarehouseError, Transient):
    pass


class OtherSchemaVersion(WarehouseError, Permanent):
    """The file is this pipeline's warehouse, of another format: what a rebuild replaces."""


class WarehouseLocked(WarehouseError, Transient):
    """Another process holds the file (DuckDB: one writer, or several readers, at a time)."""


class LakeMismatch(WarehouseError):
    """The warehouse was loaded from another lake than the one configured; the message says what to do."""
