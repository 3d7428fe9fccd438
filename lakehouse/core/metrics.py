"""Serving the pipeline's Prometheus metrics (prometheus_client); each stage defines its own, once
(producer/metrics.py, streaming/metrics.py, warehouse/metrics.py).

Each long-running service (producer, streaming job, loader) counts what it does in the process that
does it and serves its own /metrics (`serve`); Prometheus adds the `job` label from its scrape config
(infra/prometheus). Counters start at 0 when a service starts, which `rate()`/`increase()` handle. What
no single service knows (Kafka lag against the lake's checkpoint, end-to-end freshness, the last
reconcile) is served by the monitor, `lakehouse metrics --serve` (lakehouse/app/status.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server

if TYPE_CHECKING:
    from lakehouse.core.config import Settings

log = logging.getLogger(__name__)

SERVICES = ("producer", "streaming", "loader", "monitor")

def serve(settings: Settings, service: str) -> Any:
    """Serve this process's metrics at http://METRICS_HOST:<the service's port>/metrics; port 0 means not
    at all. A port in use is a warning, never a reason for the service itself to stop. Returns the server
    (or None)."""
    port, host = settings.metrics_port(service), settings.metrics_host
    if not port:
        return None
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("%s metrics not served: cannot listen on %s:%d (%s); set %s_METRICS_PORT to a free port",
                    service, host, port, exc, service.upper())
        return None
    log.info("%s metrics at http://%s:%d/metrics", service, host, port)
    return server
