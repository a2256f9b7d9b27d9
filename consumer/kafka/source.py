"""The Kafka side: a consumer-group member with cooperative-sticky assignment and explicit commits."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.core.errors import KafkaClientStuck, TransientError
from consumer.kafka.watchdog import STATISTICS_INTERVAL_MS, GroupWatch, cluster_answers, group_state

log = logging.getLogger(__name__)

TP = tuple[str, int]

# How long the cluster has to answer the watchdog's question (the loop waits for it).
PROBE_TIMEOUT_S = 5.0


class RebalanceListener(Protocol):
    def on_assign(self, partitions: list[TP]) -> None: ...
    def on_revoke(self, partitions: list[TP]) -> None: ...
    def on_lost(self, partitions: list[TP]) -> None: ...
    def on_commit_failed(self, partitions: list[TP], reason: str) -> None: ...


def _tps(partitions: Iterable[TopicPartition]) -> list[TP]:
    return [(p.topic, p.partition) for p in partitions]


class KafkaSource:
    """The group member. `probe_config` (an admin client's configuration) turns on the watchdog: a handle
    that has been without its group coordinator for `rejoin_after_s` while the cluster answers a new client
    is replaced (see consumer/kafka/watchdog.py)."""

    def __init__(self, config: Mapping[str, Any], topics: list[str], listener: RebalanceListener,
                 probe_config: Mapping[str, Any] | None = None, rejoin_after_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        conf = dict(config)
        # Bound what librdkafka prefetches: memory stays bounded whatever the backlog.
        conf.setdefault("queued.max.messages.kbytes", 32768)
        if probe_config is not None:
            conf["statistics.interval.ms"] = STATISTICS_INTERVAL_MS
        self._config = conf
        self._topics = topics
        self._listener = listener
        self._callback_error: BaseException | None = None
        self.group_id = str(conf.get("group.id"))
        self._probe_config = probe_config
        self._clock = clock
        self._watch = GroupWatch(rejoin_after_s, clock())
        self._handle = 0  # which handle's callbacks count: those of a replaced one are ignored
        self._consumer = self._new_handle()
        self.closing: threading.Thread | None = None  # closes the last handle replaced
        self._abandoned = False

    def _new_handle(self) -> Consumer:
        self._handle += 1
        conf = dict(self._config)
        conf["on_commit"] = self._current(self._on_commit)
        conf["stats_cb"] = self._current(self._on_statistics)
        return Consumer(conf)

    def _current(self, callback: Callable[..., None]) -> Callable[..., None]:
        handle = self._handle

        def call(*args: Any) -> None:
            if handle == self._handle:
                callback(*args)
        return call

    def subscribe(self) -> None:
        self._consumer.subscribe(
            self._topics,
            on_assign=self._guarded(self._listener.on_assign),
            on_revoke=self._guarded(self._listener.on_revoke),
            on_lost=self._guarded(self._listener.on_lost),
        )

    def _guarded(self, callback: Any) -> Any:
        """A rebalance callback whose exception is raised again once librdkafka's call returns (an exception
        raised inside its C callback comes out mangled, as a SystemError)."""
        def call(_consumer: Any, partitions: list[TopicPartition]) -> None:
            try:
                callback(_tps(partitions))
            except BaseException as exc:  # noqa: BLE001 - kept and raised again by _raise_callback_error
                self._callback_error = exc
        return self._current(call)

    def _raise_callback_error(self) -> None:
        error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Up to `max_messages` messages: waits at most `timeout_s` for the first, and takes what else is
        already there without waiting (librdkafka's batch consume waits for all it was asked for)."""
        if self._probe_config is not None and self._watch.due(self._clock()) and self._check_group():
            return []
        first = self._consumer.poll(timeout_s)
        self._raise_callback_error()
        messages = [] if first is None else [first]
        if first is not None and max_messages > 1:
            messages += self._consumer.consume(num_messages=max_messages - 1, timeout=0)
            self._raise_callback_error()
        out = []
        for message in messages:
            error = message.error()
            if error is None:
                out.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                continue
            elif error.fatal():
                raise KafkaException(error)
            else:
                # Broker-side hiccups (a leader moving, a broker restarting): librdkafka retries them.
                log.warning("kafka consumer reports: %s", error)
        return out

    @property
    def group_last_up(self) -> float:
        """When the statistics last showed the group up, or the watchdog last began a new period (its clock)."""
        return self._watch.last_up

    def _on_statistics(self, statistics: str) -> None:
        self._watch.observed(self._clock(), group_state(statistics))

    def _check_group(self) -> bool:
        """Ask the cluster about the group (the loop waits up to PROBE_TIMEOUT_S, and a second more); True if
        the handle was replaced."""
        away_s = self._clock() - self._watch.last_up
        answers = cluster_answers(self._probe_config or {}, self.group_id, PROBE_TIMEOUT_S)
        if not self._watch.answered(self._clock(), answers):
            if answers:
                log.info("the consumer has been without its group coordinator for %.0f s while the cluster "
                         "answers a new client; it is given a little longer before it is replaced", away_s)
            return False
        log.warning("the consumer has been without its group coordinator for %.0f s while the cluster answers "
                    "a new client: replacing its Kafka client; the partitions it held are given up uncommitted",
                    away_s)
        self.replace()
        return True

    def replace(self) -> None:
        """Give up this handle's partitions (uncommitted, as when they are lost) and join with a new one."""
        if self.closing is not None and self.closing.is_alive():
            # A second stuck client while the first one has not closed: something this process cannot
            # get out of. Its clients are left to the process's end (closing them could hang as well).
            self._abandoned = True
            raise KafkaClientStuck("the Kafka client is stuck outside its group again, and the one it replaced "
                                   "has not closed either: stopping for a fresh start")
        held = sorted(self.assignment())
        if held:
            self._listener.on_lost(held)
        stuck, self._consumer = self._consumer, self._new_handle()
        self.subscribe()
        # Closing a stuck handle may wait for commits that never finish: not on the loop's thread. Its
        # callbacks are no longer served (see _current).
        self.closing = threading.Thread(target=_close_quietly, args=(stuck,), name="kafka-close-replaced",
                                        daemon=True)
        self.closing.start()

    def assignment(self) -> set[TP]:
        return set(_tps(self._consumer.assignment()))

    def pause(self, partitions: Iterable[TP]) -> None:
        self._pause_or_resume(self._consumer.pause, partitions)

    def resume(self, partitions: Iterable[TP]) -> None:
        self._pause_or_resume(self._consumer.resume, partitions)

    @staticmethod
    def _pause_or_resume(call: Any, partitions: Iterable[TP]) -> None:
        tps = [TopicPartition(t, p) for t, p in partitions]
        if not tps:
            return
        try:
            call(tps)
        except KafkaException as exc:
            # A partition this member no longer (or not yet) has: its pause state goes with the assignment.
            # Often called inside a rebalance callback, where an exception would not reach anyone.
            log.warning("pausing or resuming %s: %s", _tps(tps), exc)

    def commit(self, offsets: Mapping[TP, int], asynchronous: bool) -> None:
        """Commit the next offsets to read; raises TransientError when a synchronous commit fails."""
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if asynchronous:
                self._consumer.commit(offsets=tps, asynchronous=True)
                return
            result = self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            raise TransientError(f"commit of {len(tps)} partitions failed: {exc}") from exc
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise TransientError(f"commit failed for {_tps(failed)}: {failed[0].error}")

    def close(self) -> None:
        if self._abandoned:
            return
        self._consumer.close()
        self._raise_callback_error()

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        # Served inside poll(), on the loop's thread. A failed asynchronous commit (a rebalance in progress
        # makes the generation stale, say) is not covered by a later one when the partition goes idle.
        if error is not None:
            self._listener.on_commit_failed(_tps(partitions), str(error))
            return
        failed = [tp for tp in partitions if tp.error is not None]
        if failed:
            self._listener.on_commit_failed(_tps(failed), str(failed[0].error))


def _close_quietly(consumer: Consumer) -> None:
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as exc:
        log.info("closing the replaced Kafka client: %s", exc)
