"""The `feature-consumer` command line.

    feature-consumer run --config FILE           consume until SIGTERM/SIGINT, then drain, commit and leave
    feature-consumer run --feast-repo PATH       the same, with the views and online store of a Feast repo
    feature-consumer init-schema --config FILE   create each view's table (Feast's DDL), and the keyspace if asked
    feature-consumer check --config FILE         validate the config and reach Kafka, Cassandra and the registry
    feature-consumer lag --config FILE           per-partition lag of the consumer group
    feature-consumer backfill --config FILE --input FILE   offline rows through the same guard
    feature-consumer materialize --feast-repo PATH START END     a Feast repo's offline rows, through the guard
    feature-consumer materialize-incremental --feast-repo PATH END   the same, from where the last run ended

Exit codes: 0 success; 1 a check failed or an unexpected error; 2 the configuration is wrong.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from consumer import __version__
from consumer.core.errors import ConfigError, FeatureConsumerError, KafkaClientStuck, TransientError

if TYPE_CHECKING:
    from consumer.config import Settings

# Set by SIGTERM/SIGINT from the first moment of `main` (before the heavy imports), so that a stop asked
# for during start-up ends the process cleanly instead of killing it.
STOP = threading.Event()

log = logging.getLogger("consumer")


def _settings(args: argparse.Namespace) -> Settings:
    from consumer.config import load_settings

    if args.config is None and args.feast_repo is None:
        raise ConfigError("give --config FILE, --feast-repo PATH, or both")
    return load_settings(args.config, feast_repo=args.feast_repo)


def cmd_run(args: argparse.Namespace) -> int:
    from consumer.app import build

    settings = _settings(args)
    daemon = build(settings, stop=STOP)
    if STOP.is_set():
        log.info("stopped during start-up")
        daemon.close()
        return 0
    daemon.start_monitoring()
    port = daemon.server.port if daemon.server else None
    log.info("feature-consumer %s: group %r, topics %s, views %s, metrics on http://%s:%s/metrics",
             __version__, settings.kafka.group_id, settings.topics, [v.name for v in settings.views],
             settings.metrics.host, port)
    try:
        daemon.run()
    finally:
        daemon.close()
    log.info("stopped")
    return 0


def cmd_init_schema(args: argparse.Namespace) -> int:
    from consumer.cassandra.writer import CassandraStore

    settings = _settings(args)
    store = CassandraStore(settings.cassandra.options())
    try:
        for cql in store.create_schema(settings.views, create_keyspace=args.create_keyspace):
            print(cql.strip() + ";")
    finally:
        store.close()
    return 0


def _check(name: str, fn: Callable[[], str]) -> bool:
    try:
        detail = fn()
    except (FeatureConsumerError, OSError) as exc:
        print(f"FAIL  {name}: {exc}")
        return False
    except Exception as exc:  # noqa: BLE001 - `check` reports every failure by name and goes on
        print(f"FAIL  {name}: {type(exc).__name__}: {exc}")
        return False
    print(f"ok    {name}: {detail}")
    return True


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"ok    config: {len(settings.views)} views, topics {settings.topics}, "
          f"group {settings.kafka.group_id!r}")
    results = []

    def kafka_topics() -> str:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(settings.kafka.admin_config())
        try:
            metadata = admin.list_topics(timeout=10)
        except Exception as exc:
            raise TransientError(f"Kafka at {settings.kafka.bootstrap_servers} does not answer: {exc}") from exc
        wanted = [*settings.topics, settings.kafka.dead_letter_topic]
        missing = [t for t in wanted if t not in metadata.topics]
        if missing:
            raise ConfigError(f"topics missing on {settings.kafka.bootstrap_servers}: {missing}")
        parts = {t: len(metadata.topics[t].partitions) for t in settings.topics}
        dead_letters = settings.kafka.dead_letter_topic
        return f"{settings.kafka.bootstrap_servers}, partitions {parts}, dead letters to {dead_letters!r}"

    results.append(_check("kafka", kafka_topics))

    def cassandra() -> str:
        from consumer.cassandra.writer import CassandraStore

        store = CassandraStore(settings.cassandra.options())
        try:
            version = store.ping()
            rows = store.session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (settings.cassandra.keyspace,)
            )
            tables = {r["table_name"] for r in rows}
        finally:
            store.close()
        missing = [v.table for v in settings.views if v.table not in tables]
        if missing:
            raise ConfigError(f"keyspace {settings.cassandra.keyspace!r} lacks tables {missing}; "
                              "run `feature-consumer init-schema`")
        return f"Cassandra {version} at {settings.cassandra.hosts}:{settings.cassandra.port}, " \
               f"keyspace {settings.cassandra.keyspace!r} has every view's table"

    results.append(_check("cassandra", cassandra))

    if settings.schema_registry is not None:
        def registry() -> str:
            from consumer.app import registry_client
            from consumer.decode.registry import check_registry_subjects

            client = registry_client(settings)
            assert client is not None
            check_registry_subjects(settings.views, client)
            return f"{client.url}: view subjects resolve"

        results.append(_check("schema registry", registry))

    def schemas() -> str:
        from consumer.app import registry_client
        from consumer.decode.decoder import topic_decoders

        topic_decoders(settings.views, registry_client(settings))
        return "every view's schema source resolves against the view"

    results.append(_check("views", schemas))
    return 0 if all(results) else 1


def cmd_backfill(args: argparse.Namespace) -> int:
    from pathlib import Path

    from consumer.backfill import backfill, read_frame
    from consumer.cassandra.writer import CassandraStore

    settings = _settings(args)
    names = [v.name for v in settings.views]
    if args.view is None and len(names) != 1:
        raise ConfigError(f"--view is needed: the config has views {names}")
    view = next((v for v in settings.views if v.name == (args.view or names[0])), None)
    if view is None:
        raise ConfigError(f"--view {args.view!r} is not in the config (views: {names})")
    frame = read_frame(Path(args.input))
    store = CassandraStore(settings.cassandra.options())
    try:
        summary = backfill(view, frame, store, settings.limits.limits(), chunk_size=args.chunk_size,
                           timestamp_column=args.timestamp_column, keep_empty_rows=args.keep_empty_rows)
    finally:
        store.close()
    print(summary.render())
    return 0 if summary.rejected == 0 else 1


def moment(text: str, now: float) -> datetime:
    """An ISO 8601 time (naive means UTC, as in Feast), or `now`."""
    if text.strip().lower() == "now":
        return datetime.fromtimestamp(now, UTC)
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{text!r} is not an ISO 8601 time (e.g. 2026-11-30T06:00:00) nor `now`") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def cmd_materialize(args: argparse.Namespace) -> int:
    from consumer.cassandra.writer import CassandraStore
    from consumer.feast.offline import FeastOffline
    from consumer.materialize import materialize

    settings = _settings(args)
    if settings.feast_repo is None:
        raise ConfigError(f"{args.command} reads a Feast repo: give --feast-repo PATH")
    now = time.time()
    end = moment(args.end, now)
    start = moment(args.start, now) if args.command == "materialize" else None
    if start is not None and start > end:
        raise ConfigError(f"START {start.isoformat()} is after END {end.isoformat()}")
    offline = FeastOffline.open(settings.feast_repo)
    views = offline.select(settings.views, args.views)
    if not views:
        raise ConfigError(f"--feast-repo {settings.feast_repo}: no online view of this daemon's to materialize")
    store = CassandraStore(settings.cassandra.options())
    try:
        runs = materialize(views, offline, store, settings.limits.limits(), end, start, chunk_size=args.chunk_size,
                           stop=STOP)
    finally:
        store.close()
    for run in runs:
        print(run.render())
    return 0 if all(run.ok for run in runs) else 1


def cmd_lag(args: argparse.Namespace) -> int:
    from consumer.kafka.offsets import format_table, group_lag

    settings = _settings(args)
    group = args.group or settings.kafka.group_id
    rows = group_lag(settings.kafka.admin_config(), group, settings.topics)
    print(f"GROUP {group}")
    print(format_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feature-consumer",
        description="Consume Avro feature records from Kafka and upsert them into Feast's "
        "Cassandra online store; an older event never overwrites a newer value.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, fn: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", "-c", help="YAML config file (see examples/)")
        p.add_argument("--feast-repo", help="a Feast feature repo: its Kafka-fed views and online store")
        p.set_defaults(fn=fn)
        return p

    command("run", cmd_run, "consume and write until stopped")
    init = command("init-schema", cmd_init_schema, "create the views' tables with Feast's DDL")
    init.add_argument("--create-keyspace", action="store_true",
                      help="also create the keyspace (with cassandra.replication) if it does not exist")
    command("check", cmd_check, "validate the config and reach every dependency")
    fill = command("backfill", cmd_backfill, "write offline feature rows (parquet/CSV) through the guard")
    fill.add_argument("--input", "-i", required=True, help="a .parquet or .csv push frame")
    fill.add_argument("--view", help="the feature view (needed when the config has several)")
    fill.add_argument("--timestamp-column",
                      help="the event time column, when not named as the view's timestamp field "
                      "(get_historical_features names it as its entity frame did: event_timestamp by default)")
    fill.add_argument("--keep-empty-rows", action="store_true",
                      help="also write rows without any feature value (left out by default: get_historical_features "
                      "gives one for every entity it found nothing for)")
    fill.add_argument("--chunk-size", type=int, default=5000)
    window = command("materialize", cmd_materialize,
                     "write a Feast repo's offline rows of [START, END] through the guard, and record the interval")
    window.add_argument("start", metavar="START", help="ISO 8601 (naive is UTC), or `now`")
    window.add_argument("end", metavar="END", help="ISO 8601 (naive is UTC), or `now`")
    onward = command("materialize-incremental", cmd_materialize,
                     "the same, for each view from the end of its last materialized interval (or now - ttl) to END")
    onward.add_argument("end", metavar="END", help="ISO 8601 (naive is UTC), or `now`")
    for p in (window, onward):
        p.add_argument("--views", "-v", nargs="+", action="extend",
                       help="only these views (default: every online view the daemon writes from the repo)")
        p.add_argument("--chunk-size", type=int, default=2000, help="offline rows held and written at a time")
    lag = command("lag", cmd_lag, "print the consumer group's lag per partition")
    lag.add_argument("--group", help="another consumer group than the configured one")
    return parser


def main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: STOP.set())
    # `kill -USR1` prints every thread's stack to stderr and lets the process go on: what a daemon that
    # looks stuck is doing, even while its loop waits inside librdkafka or the driver. Written to file
    # descriptor 2, the process's stderr: `sys.stderr` may have been replaced by something that is not a
    # file (a caller capturing it).
    faulthandler.register(signal.SIGUSR1, file=2, all_threads=True)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("cassandra", "confluent_kafka", "httpx", "feast"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        code: int = args.fn(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KafkaClientStuck as exc:
        print(f"error: {exc}", file=sys.stderr)
        # Ending the interpreter would destroy the stuck Kafka clients, which can hang as closing them did:
        # out at once instead, for the supervisor to start the process afresh.
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(1)
    except FeatureConsumerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
