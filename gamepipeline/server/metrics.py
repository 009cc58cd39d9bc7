"""The server's Prometheus metrics, served at ``GET /metrics``.

Each server keeps its own registry, so that two servers in one process (as in tests)
never share counters. Counts that the database already knows (pipelines by state and
template, the queue's depth) are read from it when scraped rather than kept twice;
events the database does not keep (latencies, report verdicts) are counted as they
happen.

Metric names:

- ``gamepipeline_pipelines{state, template}``: pipelines in each state, per template name;
- ``gamepipeline_queue_depth``: pending pipelines no node has been given yet;
- ``gamepipeline_connected_agents``: agents with an open stream;
- ``gamepipeline_dispatch_latency_seconds``: from submission to hand-over to a node;
- ``gamepipeline_step_duration_seconds{type, state}``: from a step's start to its end;
- ``gamepipeline_status_updates_total{kind, outcome}``: agents' reports, by kind
  (``pipeline`` or ``step``) and outcome (``applied``, ``unchanged``, ``duplicate``,
  ``rejected``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from gamepipeline.server.store import Store

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

#: Steps range from a second (a mkdir) to many minutes (a download of a platform).
STEP_BUCKETS: Final = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Hand-over is immediate when a node has room, and waits for a slot otherwise.
DISPATCH_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _StoreCollector(Collector):
    """Reads the counts the database already keeps, at scrape time."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pipelines = GaugeMetricFamily(
            "gamepipeline_pipelines",
            "Pipelines in each state, per template name.",
            labels=["state", "template"],
        )
        for (state, template), count in sorted(
            self._store.count_by_state_and_template().items()
        ):
            pipelines.add_metric([state, template], count)
        yield pipelines
        yield GaugeMetricFamily(
            "gamepipeline_queue_depth",
            "Pending pipelines that no node has been given yet.",
            value=self._store.queue_depth(),
        )


class Metrics:
    """The server's metrics; ``render()`` answers the text a scraper reads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connected_agents = Gauge(
            "gamepipeline_connected_agents",
            "Agents with an open PipelineStream.",
            registry=self.registry,
        )
        self.dispatch_latency = Histogram(
            "gamepipeline_dispatch_latency_seconds",
            "Time from a pipeline's submission to its hand-over to a node.",
            buckets=DISPATCH_BUCKETS,
            registry=self.registry,
        )
        self.step_duration = Histogram(
            "gamepipeline_step_duration_seconds",
            "Time from a step's start to its end, by step type and final state.",
            ["type", "state"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.status_updates = Counter(
            "gamepipeline_status_updates",
            "Status reports from agents, by kind and by what the server did with them.",
            ["kind", "outcome"],
            registry=self.registry,
        )

    def watch_store(self, store: Store) -> None:
        """Serve the counts kept in ``store``; call once per server."""
        self.registry.register(_StoreCollector(store))

    def count_agents_with(self, count: Callable[[], int]) -> None:
        self.connected_agents.set_function(count)

    def report(self, kind: str, *, applied: bool, duplicate: bool) -> None:
        """Count one status report of ``kind`` (``pipeline`` or ``step``)."""
        if applied:
            outcome = "applied"
        elif duplicate:
            outcome = "duplicate"
        else:
            outcome = "unchanged"
        self.status_updates.labels(kind, outcome).inc()

    def rejected(self, kind: str) -> None:
        """Count a report the server refused (malformed, unknown, wrong node)."""
        self.status_updates.labels(kind, "rejected").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
