"""Assembling the daemon from its settings: the same wiring for `feature-consumer run` and the benchmarks.

This and the CLI are the only places that read `Settings`: every part is handed the small typed values
it needs (limits, policies, timeouts, connection options, librdkafka configuration).
"""

from __future__ import annotations

import gc
import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol

from consumer.cassandra.writer import CassandraStore
from consumer.config import Settings
from consumer.core.errors import TransientError
from consumer.core.views import views_by_topic
from consumer.decode.decoder import topic_decoders
from consumer.decode.registry import RegistryClient, check_registry_subjects
from consumer.events import EventFanout, Events
from consumer.kafka.deadletter import DeadLetterProducer
from consumer.kafka.offsets import OffsetReader
from consumer.kafka.source import KafkaSource
from consumer.observe.health import HealthServer, StoreProbe
from consumer.observe.lag import LagCollector
from consumer.observe.metrics import Metrics
from consumer.pipeline import Pipeline

log = logging.getLogger(__name__)


class _Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Daemon:
    pipeline: Pipeline
    store: CassandraStore
    dead_letters: DeadLetterProducer
    metrics: Metrics
    server: HealthServer | None
    # Threads beside the loop: the lag collector and the Cassandra probe (with `serve_metrics`).
    monitors: list[_Service] = field(default_factory=list)

    def run(self) -> None:
        """Consume until the pipeline is stopped (see `Pipeline.run`)."""
        settle_heap()
        self.pipeline.run()

    def start_monitoring(self) -> None:
        for service in [*([self.server] if self.server else []), *self.monitors]:
            service.start()

    def close(self) -> None:
        for service in [*self.monitors, *([self.server] if self.server else [])]:
            service.stop()
        self.dead_letters.close()
        self.store.close()


# The cyclic collector's youngest generation is collected after this many new tracked objects (CPython's
# default is 700). See `settle_heap`.
YOUNG_GC_THRESHOLD = 50_000


def settle_heap() -> None:
    """Move everything alive after start-up out of the cyclic garbage collector's sight, and collect the
    young generation less often.

    The imports (pandas, the drivers) leave some 280,000 tracked objects. A full collection walks all of
    them while holding the GIL: measured at 560 ms on the development machine, during which no write is
    sent or answered, so it set the loop's p99 freshness. Frozen, they are never scanned again.

    What the loop allocates afterwards is collected as usual, but not every 700 objects: a backlog allocates
    tens of thousands of objects a second (decoded records, requests in flight), so the default threshold
    ran some 1,000 young, 90 middle and 8 full collections per 20,000 guarded writes, about 0.03 ms of
    GIL-held CPU per write, each full one 30-60 ms long (docs/performance.md). Most of those objects die by
    reference counting within milliseconds; at 50,000 the same run takes four or five young collections,
    none longer than 35 ms, and no older one.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


def registry_client(settings: Settings) -> RegistryClient | None:
    if settings.schema_registry is None:
        return None
    registry = settings.schema_registry
    return RegistryClient(registry.url, registry.client_config(), registry.timeout_s)


def build(settings: Settings, serve_metrics: bool = True, extra_events: Events | None = None,
          stop: threading.Event | None = None) -> Daemon:
    """The whole daemon for these settings; call `start_monitoring()` then `run()`."""
    registry = registry_client(settings)
    decoders = topic_decoders(settings.views, registry)
    if registry is not None:
        try:
            check_registry_subjects(settings.views, registry)
        except TransientError as exc:
            log.warning("schema registry not reachable at start-up (%s); records wait until it is", exc)
    store = CassandraStore(settings.cassandra.options())
    dead_letters = DeadLetterProducer(
        settings.kafka.producer_config(), settings.kafka.dead_letter_topic, settings.kafka.group_id
    )
    metrics = Metrics(views_by_topic={topic: [v.name for v in views]
                                      for topic, views in views_by_topic(settings.views).items()})
    events: Events = metrics if extra_events is None else EventFanout([metrics, extra_events])
    pipeline = Pipeline(
        decoders, store, dead_letters,
        lambda listener: KafkaSource(settings.kafka.consumer_config(), settings.topics, listener,
                                     probe_config=settings.kafka.admin_config(),
                                     rejoin_after_s=settings.kafka.rejoin_after_s),
        limits=settings.limits.limits(), policy=settings.batch.policy(), backoff=settings.run.backoff(),
        drain_timeout_s=settings.run.drain_timeout_s, events=events, stop=stop,
    )
    if not serve_metrics:
        return Daemon(pipeline, store, dead_letters, metrics, None)
    server = HealthServer(metrics, settings.metrics.host, settings.metrics.port, settings.metrics.stuck_after_s)
    # A consumer handle of its own that never subscribes: it only asks for watermarks and the group's
    # committed offsets, and its life does not depend on the loop's consumer.
    offsets = OffsetReader(settings.kafka.consumer_config(), settings.kafka.group_id)
    monitors: list[_Service] = [
        LagCollector(metrics, offsets, settings.kafka.auto_offset_reset, settings.metrics.lag_interval_s),
        StoreProbe(metrics, store.ping, settings.metrics.lag_interval_s),
    ]
    return Daemon(pipeline, store, dead_letters, metrics, server, monitors)
