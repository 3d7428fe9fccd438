"""Is the warehouse's current state equal to MongoDB's? Per document, by a hash of its content."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from lakehouse.config import Settings
from lakehouse.events import canonical_document, doc_id_text
from lakehouse.mongo import connect as connect_mongo
from warehouse.loader import connect


@dataclass(frozen=True)
class Reconciliation:
    source: int
    warehouse: int
    missing: list[str] = field(default_factory=list)  # in MongoDB, not in the warehouse
    extra: list[str] = field(default_factory=list)  # in the warehouse, not in MongoDB
    mismatched: list[str] = field(default_factory=list)  # in both, different content

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.mismatched)

    def line(self) -> str:
        return (
            f"reconciled: source={self.source} warehouse={self.warehouse} missing={len(self.missing)} "
            f"extra={len(self.extra)} mismatched={len(self.mismatched)}"
        )

    def examples(self, limit: int = 5) -> list[str]:
        out = []
        for label, keys in (("missing", self.missing), ("extra", self.extra), ("mismatched", self.mismatched)):
            if keys:
                out.append(f"  {label}: {', '.join(sorted(keys)[:limit])}{' ...' if len(keys) > limit else ''}")
        return out


def _digest(document: object) -> str:
    return hashlib.sha256(canonical_document(document).encode()).hexdigest()  # type: ignore[arg-type]


def reconcile(settings: Settings, collection: str = "orders") -> Reconciliation:
    client = connect_mongo(settings, "lakehouse-reconcile")
    try:
        source = {
            doc_id_text({"_id": doc["_id"]}): _digest(doc)
            for doc in client[settings.mongo_db][collection].find()
        }
    finally:
        client.close()
    con = connect(settings.warehouse_path, read_only=True)
    try:
        rows = con.execute("SELECT doc_id, document FROM orders").fetchall()
        warehouse = {doc_id: _digest(document) for doc_id, document in rows}
    finally:
        con.close()
    return Reconciliation(
        source=len(source),
        warehouse=len(warehouse),
        missing=[k for k in source if k not in warehouse],
        extra=[k for k in warehouse if k not in source],
        mismatched=[k for k, h in source.items() if k in warehouse and warehouse[k] != h],
    )
