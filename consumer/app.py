"""Assembling the daemon from its settings: the same wiring for `feature-consumer run` and the benchmarks."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from consumer.cassandra.writer import CassandraStore
from consumer.config import Settings
from consumer.core.errors import TransientError
from consumer.decode.decoder import topic_decoders
from consumer.decode.registry import RegistryClient, check_registry_subjects
from consumer.kafka.deadletter import DeadLetterProducer
from consumer.kafka.source import KafkaSource
from consumer.observe.metrics import HealthServer, LagCollector, Metrics
from consumer.pipeline import EventFanout, Events, Pipeline

log = logging.getLogger(__name__)


@dataclass
class Daemon:
    pipeline: Pipeline
    store: CassandraStore
    dead_letters: DeadLetterProducer
    metrics: Metrics
    server: HealthServer | None
    collector: LagCollector | None

    def start_monitoring(self) -> None:
        if self.server is not None:
            self.server.start()
        if self.collector is not None:
            self.collector.start()

    def close(self) -> None:
        if self.collector is not None:
            self.collector.stop()
        if self.server is not None:
            self.server.stop()
        self.dead_letters.close()
        self.store.close()


def build(settings: Settings, serve_metrics: bool = True, extra_events: Events | None = None,
          stop: threading.Event | None = None) -> Daemon:
    """The whole daemon for these settings; call `start_monitoring()` then `pipeline.run()`."""
    registry = None
    if settings.schema_registry is not None:
        registry = RegistryClient(settings.schema_registry.url, settings.schema_registry.client_config())
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
    views_by_topic: dict[str, list[str]] = {}
    for view in settings.views:
        for topic in view.topics:
            views_by_topic.setdefault(topic, []).append(view.name)
    metrics = Metrics(views_by_topic=views_by_topic)
    events: Events = metrics if extra_events is None else EventFanout([metrics, extra_events])
    pipeline = Pipeline(
        settings, decoders, store, dead_letters,
        lambda listener: KafkaSource(settings.kafka.consumer_config(), settings.topics, listener),
        events=events, stop=stop,
    )
    server = collector = None
    if serve_metrics:
        server = HealthServer(metrics, settings.metrics.host, settings.metrics.port, settings.metrics.stuck_after_s)
        # A consumer of its own that never subscribes: it only asks for watermarks and the group's committed
        # offsets, and its life does not depend on the loop's consumer.
        probe = KafkaSource(settings.kafka.consumer_config(), settings.topics, pipeline)
        reset = settings.kafka.auto_offset_reset
        collector = LagCollector(metrics, probe.log_ends, lambda tps: probe.start_offsets(tps, reset), store.ping,
                                 settings.metrics.lag_interval_s, on_stop=probe.close)
    return Daemon(pipeline, store, dead_letters, metrics, server, collector)
