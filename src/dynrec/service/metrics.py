"""Prometheus metrics of one app, in its own `CollectorRegistry` (no process-global state, so
several apps — tests, workers — never share or clash).

Per route (the route *template*, e.g. ``/v1/users/{user_id}``, never the raw path): request counts
by status and a latency histogram. Service-wide: events ingested (and how many named items the
model does not know yet), the interest shifts they completed, recommendation micro-batch sizes,
the loaded model (a gauge = 1 labelled with name and version), incremental updates, and the
per-user state cache's hits and misses (read from the session's counters when scraped).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE", "MetricsMiddleware", "ServiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _CacheCollector(Collector):
    """State-cache hits/misses, read from a callable when scraped (the counters live in the
    session of the current model; `stats` adds those of models swapped out before)."""

    def __init__(self, stats: Callable[[], tuple[int, int]]) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        hits, misses = self.stats()
        h = CounterMetricFamily("dynrec_state_cache_hits", "Reads served by a cached per-user state")
        h.add_metric([], float(hits))
        m = CounterMetricFamily(
            "dynrec_state_cache_misses", "Reads that rebuilt a per-user state from the store"
        )
        m.add_metric([], float(misses))
        yield h
        yield m


class ServiceMetrics:
    """The app's metrics (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dynrec_http_requests",
            "HTTP requests by route template",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "dynrec_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "dynrec_events_ingested", "Events durably stored via POST /v1/events", registry=r
        )
        self.unknown_items = Counter(
            "dynrec_events_unknown_items",
            "Ingested events whose item the loaded model does not know",
            registry=r,
        )
        self.batch_size = Histogram(
            "dynrec_recommend_batch_size",
            "Recommendation requests scored in one model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.model = Gauge(
            "dynrec_model_info", "The loaded model (1 for the current one)", ["model", "version"], registry=r
        )
        self.updates = Counter("dynrec_model_updates", "Incremental updates applied", registry=r)
        self.pending = Gauge("dynrec_pending_update_events", "Events waiting for the next update", registry=r)
        self.fallbacks = Counter(
            "dynrec_recommend_fallbacks", "Recommendations answered by the popular fallback", registry=r
        )
        self.shifts = Counter(
            "dynrec_interest_shifts", "Interest shifts completed by ingested events", registry=r
        )

    def watch_cache(self, stats: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_CacheCollector(stats))

    def set_model(self, name: str, version: str) -> None:
        self.model.clear()
        self.model.labels(name, version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


_MAX_LABEL_SETS = 4096
"""Label sets whose metric children the middleware keeps at hand (clients choose the method)."""


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (pure ASGI: the route is
    known once the router has matched, so it is read after the app returns). The metric children
    of each label set are looked up once and kept: ``labels()`` costs more than the count and
    the observation together."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._counters: dict[tuple[str, str, str], Counter] = {}
        self._timers: dict[tuple[str, str], Histogram] = {}

    def _record(self, method: str, route: str, status: int, seconds: float) -> None:
        ck = (method, route, str(status))
        counter = self._counters.get(ck)
        if counter is None:
            if len(self._counters) >= _MAX_LABEL_SETS:
                self._counters.clear()
            counter = self._counters[ck] = self.metrics.requests.labels(*ck)
        counter.inc()
        tk = (method, route)
        timer = self._timers.get(tk)
        if timer is None:
            if len(self._timers) >= _MAX_LABEL_SETS:
                self._timers.clear()
            timer = self._timers[tk] = self.metrics.latency.labels(*tk)
        timer.observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._record(
                str(scope.get("method", "")), _route_of(scope), status[0], time.perf_counter() - start
            )
