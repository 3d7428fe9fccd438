"""The loader's Prometheus metrics, counted where the warehouse is loaded (and repaired) and served by the
loader service (lakehouse/core/metrics.serve)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LOADER_CHANGES = Counter("lakehouse_loader_changes", "New changes loaded into the warehouse", ["collection"])
LOADER_ROWS_READ = Counter("lakehouse_loader_rows_read", "Silver rows the loader read (duplicates included)")
LOADER_LOAD_SECONDS = Histogram("lakehouse_loader_load_seconds", "Duration of each warehouse load",
                                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60))
LOADER_VERSION = Gauge("lakehouse_loader_silver_version", "Silver Delta version the warehouse has loaded")
LOADER_NEWEST_CHANGE = Gauge("lakehouse_loader_newest_change_timestamp_seconds",
                             "Cluster time of the newest change in the warehouse")
LOADER_REPAIRED = Counter("lakehouse_loader_repaired", "Documents a reconcile sent for repair through Kafka")
LOADER_LOCKED = Counter("lakehouse_loader_locked", "Loads that waited because a reader held the warehouse")
